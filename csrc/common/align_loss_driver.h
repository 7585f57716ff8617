// align_loss composed from device primitives, shared by the CPU and CUDA backends.
//
// Forward: one pass per prediction row gathers its target row (rows[b, j]), normalizes it (and the prediction
// when asked), and writes the row's loss and d(row loss)/d(pred). Nothing of the teacher is kept.
// Backward: grad_pred = grad_loss[l] · scale · d(row loss)/d(pred), one elementwise pass.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>

#include <string_view>
#include <tuple>

#include "options.h"
#include "validate.h"

namespace fastmim {

struct AlignLossOptions {
  LossKind loss;
  RowNorm target_norm, pred_norm;
  double beta, eps;
};

struct AlignLossPrimitives {
  // row_loss[(l*B + b)*R + j] = Σ over the row's elements (1 - cos for cosine); when grad is defined
  // (shape [L, B, R, D], pred's dtype) it receives d(row_loss)/d(pred). pred and target have unit stride in D.
  void (*rows)(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& rows,
               const AlignLossShape& shape, const AlignLossOptions& options, at::Tensor& row_loss,
               at::Tensor& grad);
  // grad_pred = grad_row[l, ...] · level_scale[l] (level_scale in the accumulation dtype).
  at::Tensor (*rescale)(const at::Tensor& level_scale, const at::Tensor& grad_row);
};

// float32 for float32/bfloat16/float16 predictions, float64 for float64 (gradcheck needs the precision).
inline at::ScalarType align_loss_acc_type(const at::Tensor& pred) {
  return pred.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::Tensor unit_stride_rows(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

inline std::tuple<at::Tensor, at::Tensor> align_loss_forward(
    const AlignLossPrimitives& k, const at::Tensor& pred, const at::Tensor& target, const at::Tensor& rows,
    std::string_view loss, std::string_view target_norm, std::string_view pred_norm, double beta, double eps,
    bool with_grad) {
  const AlignLossShape s = check_align_loss(pred, target, rows);
  TORCH_CHECK_VALUE(beta >= 0, "beta must be non-negative, got ", beta);
  TORCH_CHECK_VALUE(eps > 0, "eps must be positive, got ", eps);
  const c10::DeviceGuard guard(pred.device());  // after the checks: a mixed-device call gets their error
  const LossKind kind = parse_loss(loss);
  // smooth_l1 with beta 0 is l1 (as F.smooth_l1_loss), whose derivative the smooth form cannot express.
  const AlignLossOptions o{kind == LossKind::SmoothL1 && beta == 0 ? LossKind::L1 : kind,
                           parse_row_norm(target_norm, "target_norm"), parse_row_norm(pred_norm, "pred_norm"),
                           beta, eps};
  const at::ScalarType acc = align_loss_acc_type(pred);
  at::Tensor row_loss = at::empty({s.levels, s.batch * s.rows}, pred.options().dtype(acc));
  at::Tensor grad = with_grad ? at::empty({s.levels, s.batch, s.rows, s.dim}, pred.options())
                              : at::empty({0}, pred.options());
  at::Tensor grad_arg = with_grad ? grad : at::Tensor();
  if (row_loss.numel() > 0) {
    k.rows(unit_stride_rows(pred), unit_stride_rows(target), rows.contiguous(), s, o, row_loss, grad_arg);
  }
  const double count = static_cast<double>(s.batch * s.rows) * (o.loss == LossKind::Cosine ? 1 : s.dim);
  return {row_loss.sum(1).div_(count), grad};
}

// The count the forward divided by, so the backward scales d(row loss)/d(pred) into d(mean)/d(pred).
inline double align_loss_count(const at::Tensor& grad_row, std::string_view loss) {
  const double rows = static_cast<double>(grad_row.size(1) * grad_row.size(2));
  return parse_loss(loss) == LossKind::Cosine ? rows : rows * static_cast<double>(grad_row.size(3));
}

inline at::Tensor align_loss_backward(const AlignLossPrimitives& k, const at::Tensor& grad_loss,
                                      const at::Tensor& grad_row, std::string_view loss) {
  FASTMIM_CHECK_DIM(grad_row, 4);
  FASTMIM_CHECK_FLOATING(grad_row);
  FASTMIM_CHECK_DIM(grad_loss, 1);
  FASTMIM_CHECK_FLOATING(grad_loss);
  FASTMIM_CHECK_SIZE(grad_loss, 0, grad_row.size(0));
  FASTMIM_CHECK_SAME_DEVICE(grad_loss, grad_row);
  const c10::DeviceGuard guard(grad_row.device());
  const at::Tensor scale = grad_loss.to(align_loss_acc_type(grad_row)).div(align_loss_count(grad_row, loss));
  if (grad_row.numel() == 0) return at::empty(grad_row.sizes(), grad_row.options());
  return k.rescale(scale.contiguous(), grad_row.contiguous());
}

}  // namespace fastmim
