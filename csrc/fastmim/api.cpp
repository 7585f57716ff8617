// The C++ entry points of api.h: typed handles to the operators declared in ops.cpp.
#include "api.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace fastmim {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Grads4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

}  // namespace

at::Tensor masked_patch_embed(const at::Tensor& images, const at::Tensor& ids_keep, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed) {
  static const auto op = handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>(
      "fastmim::masked_patch_embed");
  return op.call(images, ids_keep, weight, bias, pos_embed);
}

Grads4 masked_patch_embed_backward(const at::Tensor& grad_out, const at::Tensor& images, const at::Tensor& ids_keep,
                                   const at::Tensor& weight, std::array<bool, 4> output_mask) {
  static const auto op = handle<Grads4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       std::array<bool, 4>)>("fastmim::masked_patch_embed_backward");
  return op.call(grad_out, images, ids_keep, weight, output_mask);
}

std::tuple<at::Tensor, at::Tensor> align_loss(const at::Tensor& pred, const at::Tensor& target,
                                              const at::Tensor& rows, const std::string& loss,
                                              const std::string& target_norm, const std::string& pred_norm,
                                              double beta, double eps, bool with_grad) {
  static const auto op = handle<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view,
      c10::string_view, double, double, bool)>("fastmim::align_loss");
  return op.call(pred, target, rows, loss, target_norm, pred_norm, beta, eps, with_grad);
}

at::Tensor align_loss_backward(const at::Tensor& grad_loss, const at::Tensor& grad_rows, const std::string& loss) {
  static const auto op =
      handle<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>("fastmim::align_loss_backward");
  return op.call(grad_loss, grad_rows, loss);
}

at::Tensor dynamic_align(const at::Tensor& hidden, const at::Tensor& mix, const std::optional<at::Tensor>& head_weight,
                         const std::optional<at::Tensor>& head_bias) {
  static const auto op = handle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&)>("fastmim::dynamic_align");
  return op.call(hidden, mix, head_weight, head_bias);
}

Grads4 dynamic_align_backward(const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& mix,
                              const std::optional<at::Tensor>& head_weight, std::array<bool, 4> output_mask) {
  static const auto op = handle<Grads4(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const std::optional<at::Tensor>&, std::array<bool, 4>)>(
      "fastmim::dynamic_align_backward");
  return op.call(grad_out, hidden, mix, head_weight, output_mask);
}

std::tuple<at::Tensor, at::Tensor> masked_pixel_loss(const at::Tensor& pred, const at::Tensor& images,
                                                     const at::Tensor& ids, int64_t patch_size, bool norm_pix,
                                                     double eps, bool with_grad) {
  static const auto op = handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, int64_t, bool, double, bool)>(
      "fastmim::masked_pixel_loss");
  return op.call(pred, images, ids, patch_size, norm_pix, eps, with_grad);
}

std::tuple<at::Tensor, at::Tensor> block_mask(const at::Tensor& seed, int64_t batch, int64_t grid_h, int64_t grid_w,
                                              int64_t masked, int64_t min_patches, double min_aspect,
                                              int64_t attempts) {
  static const auto op = handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, int64_t,
                                                                   int64_t, int64_t, double, int64_t)>(
      "fastmim::block_mask");
  return op.call(seed, batch, grid_h, grid_w, masked, min_patches, min_aspect, attempts);
}

}  // namespace fastmim
