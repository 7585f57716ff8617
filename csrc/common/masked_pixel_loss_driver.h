// masked_pixel_loss composed from one device primitive, shared by the CPU and CUDA backends.
//
// One pass per predicted patch reads its target pixels straight from the image (nothing is patchified or
// kept), normalizes them (MAE's norm_pix: (x - mean) / √(var + eps), var unbiased), and writes the row's sum of
// squared errors and d(mean loss)/d(pred), in float32 (float64 for float64): the backward multiplies it by the
// incoming gradient and rounds once to pred's dtype, as the reference's autograd does.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/core/DeviceGuard.h>

#include <tuple>

#include "align_loss_math.h"
#include "validate.h"

namespace fastmim {

struct PixelLossOptions {
  bool norm_pix;
  double eps, inv_count;  // inv_count: 1 / (B·M·p²·C), the mean's factor
};

struct PixelLossPrimitives {
  // row_loss[b*M + m] = Σ (pred - target)² over the patch; when grad is defined ([B, M, P], the accumulation
  // dtype) it receives 2 (pred - target) · inv_count. pred has unit stride in its last dimension.
  void (*rows)(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& ids, const PixelLossShape& shape,
               const PixelLossOptions& options, at::Tensor& row_loss, at::Tensor& grad);
};

// 1 / √(var + eps) of a patch from Σ (t - mean)² over its `numel` values, var unbiased (as torch.var).
template <typename acc_t>
FASTMIM_HD acc_t pixel_norm_scale(acc_t squares, int64_t numel, acc_t eps) {
  return reciprocal_square_root(divide(squares, static_cast<acc_t>(numel - 1)) + eps);
}

inline std::tuple<at::Tensor, at::Tensor> masked_pixel_loss_forward(const PixelLossPrimitives& k, const at::Tensor& pred,
                                                                    const at::Tensor& images, const at::Tensor& ids,
                                                                    int64_t patch_size, bool norm_pix, double eps,
                                                                    bool with_grad) {
  const PixelLossShape s = check_masked_pixel_loss(pred, images, ids, patch_size, eps);
  const c10::DeviceGuard guard(pred.device());  // after the checks: a mixed-device call gets their error
  const at::ScalarType acc = pred.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t rows = s.batch * s.rows;
  const PixelLossOptions o{norm_pix, eps, 1.0 / static_cast<double>(rows * s.numel())};
  at::Tensor row_loss = at::empty({rows}, pred.options().dtype(acc));
  const at::Tensor x = pred.stride(2) == 1 ? pred : pred.contiguous();
  at::Tensor grad = at::empty(with_grad ? pred.sizes() : at::IntArrayRef{0}, pred.options().dtype(acc));
  at::Tensor grad_arg = with_grad ? grad : at::Tensor();
  if (rows > 0) k.rows(x, images, ids.contiguous(), s, o, row_loss, grad_arg);
  return {row_loss.sum().mul_(o.inv_count), grad};
}

}  // namespace fastmim
