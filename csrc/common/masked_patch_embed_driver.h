// masked_patch_embed composed from device primitives (CPU or CUDA) and ATen GEMMs, shared by both backends.
//
// Forward: one gather pass writes the kept patches as the row-major [B*K, C*p*p] matrix the GEMM reads and,
// in the same pass, initializes the output rows with bias + pos_embed[ids]; one addmm adds patches @ Wᵀ.
// Backward: dW = gradᵀ @ patches (the gather is recomputed, not kept), bias and pos_embed gradients are one
// row reduction, the image gradient is (grad @ W) scattered back into the patches' pixels.
// Channels-last images are gathered in (i, j, c) order, with the weight permuted to match (index_math.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <array>
#include <optional>
#include <tuple>

#include "validate.h"

namespace fastmim {

struct PatchEmbedPrimitives {
  // patches[r] = kept patch r (r = b*K + k); when out is defined, out[r] = bias + pos_embed[ids[r]] (either
  // may be undefined).
  void (*gather)(const at::Tensor& images, const at::Tensor& ids_keep, const PatchEmbedShape& shape,
                 at::Tensor& patches, const at::Tensor& bias, const at::Tensor& pos_embed, at::Tensor& out);
  // grad_bias = Σ_r grad[r]; grad_pos (zero-initialized) [n] = Σ_{r: ids[r] = n} grad[r]; undefined outputs are
  // skipped.
  void (*reduce_rows)(const at::Tensor& grad, const at::Tensor& ids_keep, const PatchEmbedShape& shape,
                      at::Tensor& grad_bias, at::Tensor& grad_pos);
  // grad_images (zero-initialized, laid out as patch_geometry expects) += grad_patches scattered to the kept
  // patches' pixels.
  void (*scatter)(const at::Tensor& grad_patches, const at::Tensor& ids_keep, const PatchEmbedShape& shape,
                  at::Tensor& grad_images);
};

// The weight as the GEMM reads it: [D, C·p·p] in the patch rows' pixel order.
inline at::Tensor weight_rows(const at::Tensor& weight, const PatchEmbedShape& s) {
  const at::Tensor w = s.channels_inner ? weight.permute({0, 2, 3, 1}) : weight;
  return w.reshape({s.dim, s.patch_numel()});
}

inline at::Tensor masked_patch_embed_forward(const PatchEmbedPrimitives& k, const at::Tensor& images,
                                             const at::Tensor& ids_keep, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& bias,
                                             const std::optional<at::Tensor>& pos_embed) {
  const PatchEmbedShape s = check_masked_patch_embed(images, ids_keep, weight, bias, pos_embed);
  const c10::DeviceGuard guard(images.device());  // after the checks: a mixed-device call gets their error
  const int64_t rows = s.batch * s.kept;
  const at::Tensor ids = ids_keep.contiguous();
  const at::Tensor w2d = weight_rows(weight, s);
  at::Tensor patches = at::empty({rows, s.patch_numel()}, images.options());
  const bool init = bias.has_value() || pos_embed.has_value();
  at::Tensor out = init ? at::empty({rows, s.dim}, images.options()) : at::Tensor();
  if (rows > 0) {
    k.gather(images, ids, s, patches, bias.value_or(at::Tensor()), pos_embed.value_or(at::Tensor()), out);
  }
  if (init) {
    out.addmm_(patches, w2d.t());
  } else {
    out = at::mm(patches, w2d.t());
  }
  return out.view({s.batch, s.kept, s.dim});
}

// output_mask: gradients wanted for (images, weight, bias, pos_embed); the others come back empty.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_patch_embed_backward(
    const PatchEmbedPrimitives& k, const at::Tensor& grad_out, const at::Tensor& images,
    const at::Tensor& ids_keep, const at::Tensor& weight, std::array<bool, 4> output_mask) {
  const PatchEmbedShape s = check_masked_patch_embed(images, ids_keep, weight, std::nullopt, std::nullopt);
  FASTMIM_CHECK_DIM(grad_out, 3);
  TORCH_CHECK_VALUE(grad_out.size(0) == s.batch && grad_out.size(1) == s.kept && grad_out.size(2) == s.dim,
                    "grad_out must have shape [", s.batch, ", ", s.kept, ", ", s.dim, "], got ",
                    grad_out.sizes());
  FASTMIM_CHECK_SAME_DTYPE(grad_out, images);
  FASTMIM_CHECK_SAME_DEVICE(grad_out, images);
  const c10::DeviceGuard guard(images.device());
  const int64_t rows = s.batch * s.kept;
  const at::Tensor ids = ids_keep.contiguous();
  const at::Tensor grad = grad_out.reshape({rows, s.dim}).contiguous();
  const at::Tensor w2d = weight_rows(weight, s);
  const at::Tensor none = at::empty({0}, images.options());
  at::Tensor grad_images = none, grad_weight = none, grad_bias = none, grad_pos = none;
  if (output_mask[0]) {
    const auto format = s.channels_inner ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    grad_images = at::empty(images.sizes(), images.options().memory_format(format)).zero_();  // (zeros drops it)
    if (rows > 0) k.scatter(at::mm(grad, w2d), ids, s, grad_images);
  }
  if (output_mask[1]) {
    at::Tensor patches = at::empty({rows, s.patch_numel()}, images.options());
    at::Tensor no_out;
    if (rows > 0) k.gather(images, ids, s, patches, at::Tensor(), at::Tensor(), no_out);
    grad_weight = at::mm(grad.t(), patches);
    grad_weight = s.channels_inner
                      ? grad_weight.view({s.dim, s.patch, s.patch, s.channels}).permute({0, 3, 1, 2}).contiguous()
                      : grad_weight.view(weight.sizes());
  }
  if (output_mask[2] || output_mask[3]) {
    at::Tensor bias_out = output_mask[2] ? at::empty({s.dim}, images.options()) : at::Tensor();
    at::Tensor pos_out = output_mask[3] ? at::zeros({s.num_patches(), s.dim}, images.options()) : at::Tensor();
    k.reduce_rows(grad, ids, s, bias_out, pos_out);
    if (output_mask[2]) grad_bias = bias_out;
    if (output_mask[3]) grad_pos = pos_out;
  }
  return {grad_images, grad_weight, grad_bias, grad_pos};
}

}  // namespace fastmim
