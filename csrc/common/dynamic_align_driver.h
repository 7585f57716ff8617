// dynamic_align composed from device primitives and ATen GEMMs, shared by the CPU and CUDA backends.
//
// Forward: a mixing kernel reads the S student levels once and writes the L mixed levels, then one batched
// GEMM (with the bias folded in) applies the per-level heads. The mixed levels are not kept for backward.
// Backward: dW needs the mixed levels, so they are recomputed once and freed; the gradient of the mixed
// levels (grad @ W) is then produced in row chunks, each chunk mixed back into the S levels' gradient
// (transposed mix) and reduced into the mix-weight gradient, so that it never exists whole.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#include "validate.h"

namespace fastmim {

struct DynamicAlignPrimitives {
  // out[l, c] = Σ_s mix[l, s] · in[s, c]. in [S, C] and out [L, C] have unit column stride (any row
  // stride); mix [L, S] is contiguous in the accumulation dtype.
  void (*mix)(const at::Tensor& in, const at::Tensor& mix, at::Tensor& out);
  // acc[l, s] += Σ_c a[l, c] · b[s, c]; acc [L, S] contiguous in the accumulation dtype.
  void (*dots)(const at::Tensor& a, const at::Tensor& b, at::Tensor& acc);
};

inline at::ScalarType dynamic_align_acc_type(const at::Tensor& hidden) {
  return hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// hidden [S, B, T, D] as [S, B*T*D] rows with unit column stride, without a copy when it allows.
inline at::Tensor level_rows(const at::Tensor& hidden) {
  at::Tensor rows = hidden.reshape({hidden.size(0), -1});
  return rows.size(1) > 1 && rows.stride(1) != 1 ? rows.contiguous() : rows;
}

inline at::Tensor dynamic_align_forward(const DynamicAlignPrimitives& k, const at::Tensor& hidden,
                                        const at::Tensor& mix, const std::optional<at::Tensor>& head_weight,
                                        const std::optional<at::Tensor>& head_bias) {
  const DynamicAlignShape s = check_dynamic_align(hidden, mix, head_weight, head_bias);
  const c10::DeviceGuard guard(hidden.device());  // after the checks: a mixed-device call gets their error
  const at::Tensor h = level_rows(hidden);
  const at::Tensor m = mix.to(dynamic_align_acc_type(hidden)).contiguous();
  at::Tensor mixed = at::empty({s.levels_out, s.tokens * s.dim}, hidden.options());
  if (mixed.numel() > 0) k.mix(h, m, mixed);
  if (!head_weight.has_value()) {
    return mixed.view({s.levels_out, hidden.size(1), hidden.size(2), s.dim});
  }
  const at::Tensor a = mixed.view({s.levels_out, s.tokens, s.dim});
  const at::Tensor w = head_weight->transpose(1, 2);  // [L, D, Dt]
  at::Tensor out = head_bias.has_value() ? at::baddbmm(head_bias->unsqueeze(1), a, w) : at::bmm(a, w);
  return out.view({s.levels_out, hidden.size(1), hidden.size(2), s.out_dim});
}

// Rows of the mixed-level gradient produced at a time: about a quarter of them once they pass ~8 MB.
inline int64_t dynamic_align_chunk_rows(const DynamicAlignShape& s, int64_t element_size) {
  const int64_t bytes = s.levels_out * s.tokens * s.dim * element_size;
  const int64_t chunks = bytes > (8 << 20) ? 4 : 1;
  return std::max<int64_t>(1, (s.tokens + chunks - 1) / chunks);
}

// output_mask: gradients wanted for (hidden, mix, head_weight, head_bias); the others come back empty.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dynamic_align_backward(
    const DynamicAlignPrimitives& k, const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& mix,
    const std::optional<at::Tensor>& head_weight, std::array<bool, 4> output_mask) {
  const DynamicAlignShape s = check_dynamic_align(hidden, mix, head_weight, std::nullopt);
  FASTMIM_CHECK_DIM(grad_out, 4);
  TORCH_CHECK_VALUE(grad_out.size(0) == s.levels_out && grad_out.size(1) == hidden.size(1) &&
                        grad_out.size(2) == hidden.size(2) && grad_out.size(3) == s.out_dim,
                    "grad_out must have shape [", s.levels_out, ", ", hidden.size(1), ", ", hidden.size(2), ", ",
                    s.out_dim, "], got ", grad_out.sizes());
  FASTMIM_CHECK_SAME_DTYPE(grad_out, hidden);
  FASTMIM_CHECK_SAME_DEVICE(grad_out, hidden);
  TORCH_CHECK_VALUE(!output_mask[2] || head_weight.has_value(), "a head_weight gradient needs head_weight");
  const c10::DeviceGuard guard(hidden.device());
  const at::ScalarType acc = dynamic_align_acc_type(hidden);
  const at::Tensor h = level_rows(hidden);
  const at::Tensor m = mix.to(acc).contiguous();
  const at::Tensor none = at::empty({0}, hidden.options());
  at::Tensor grad_hidden = none, grad_mix = none, grad_weight = none, grad_bias = none;
  const bool need_levels = output_mask[0] || output_mask[1];
  at::Tensor grad_mix_acc = at::zeros({s.levels_out, s.levels_in}, hidden.options().dtype(acc));
  if (output_mask[0]) grad_hidden = at::empty({s.levels_in, s.tokens * s.dim}, hidden.options());
  const at::Tensor m_t = m.t().contiguous();

  if (!head_weight.has_value()) {
    const at::Tensor g = grad_out.reshape({s.levels_out, s.tokens * s.dim}).contiguous();
    if (output_mask[1] && g.numel() > 0) k.dots(g, h, grad_mix_acc);
    if (output_mask[0] && grad_hidden.numel() > 0) k.mix(g, m_t, grad_hidden);
  } else {
    const at::Tensor g = grad_out.reshape({s.levels_out, s.tokens, s.out_dim}).contiguous();
    if (output_mask[3]) grad_bias = g.sum(1);
    if (output_mask[2]) {
      at::Tensor mixed = at::empty({s.levels_out, s.tokens * s.dim}, hidden.options());
      if (mixed.numel() > 0) k.mix(h, m, mixed);
      grad_weight = at::bmm(g.transpose(1, 2), mixed.view({s.levels_out, s.tokens, s.dim}));
    }
    if (need_levels && s.tokens > 0) {
      const int64_t chunk = dynamic_align_chunk_rows(s, hidden.element_size());
      for (int64_t start = 0; start < s.tokens; start += chunk) {
        const int64_t rows = std::min(chunk, s.tokens - start);
        const at::Tensor g_part = at::bmm(g.narrow(1, start, rows), *head_weight);  // [L, rows, D]
        const at::Tensor g_rows = g_part.view({s.levels_out, rows * s.dim});
        if (output_mask[1]) k.dots(g_rows, h.narrow(1, start * s.dim, rows * s.dim), grad_mix_acc);
        if (output_mask[0]) {
          at::Tensor target = grad_hidden.narrow(1, start * s.dim, rows * s.dim);
          k.mix(g_rows, m_t, target);
        }
      }
    }
  }
  if (output_mask[0]) grad_hidden = grad_hidden.view(hidden.sizes());
  if (output_mask[1]) grad_mix = grad_mix_acc.to(mix.scalar_type());
  return {grad_hidden, grad_mix, grad_weight, grad_bias};
}

}  // namespace fastmim
