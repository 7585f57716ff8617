// align_loss on the CPU: one pass per prediction row (gather the target row, normalize, loss and its
// gradient), and the backward's rescale. Rows of a 16-bit type are converted to float in a per-thread
// buffer; normalization is applied on the fly, so float rows are read in place.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "../common/align_loss_driver.h"
#include "../common/align_loss_math.h"
#include "../common/dispatch.h"
#include "simd.h"

namespace fastmim {
namespace {

// A row read in the accumulation type, normalized on the fly: x̂ = (x - shift) · scale.
template <typename acc_t>
struct Row {
  const acc_t* x;
  RowScale<acc_t> norm;
};

template <typename acc_t>
FASTMIM_ALWAYS_INLINE Row<acc_t> row_stats(const acc_t* x, int64_t dim, RowNorm norm, acc_t eps) {
  if (norm == RowNorm::None) return {x, {}};
  acc_t mean = 0;
  if (norm == RowNorm::LayerNorm) {
    acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < dim; ++d) sum += x[d];
    mean = sum / dim;
  }
  acc_t sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t d = 0; d < dim; ++d) sq += (x[d] - mean) * (x[d] - mean);
  return {x, row_scale(norm, mean, sq, dim, eps)};
}

// Elementwise losses read beta; cosine fills its terms from the row sums.
template <typename acc_t>
struct LossTerms {
  acc_t beta = 0, inv_beta = 0;
  CosineTerms<acc_t> cosine;
};

template <LossKind kind, typename acc_t>
FASTMIM_ALWAYS_INLINE RowSums<acc_t> row_sums(const Row<acc_t>& xr, const Row<acc_t>& tr, int64_t dim,
                                              LossTerms<acc_t>& c) {
  const acc_t *x = xr.x, *t = tr.x;
  const acc_t xs = xr.norm.shift, xk = xr.norm.scale, ts = tr.norm.shift, tk = tr.norm.scale;
  if constexpr (kind == LossKind::Cosine) {
    acc_t dot = 0, xx = 0, tt = 0, sx = 0, st = 0;
#pragma omp simd reduction(+ : dot, xx, tt, sx, st)
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t xh = (x[d] - xs) * xk, th = (t[d] - ts) * tk;
      dot += xh * th;
      xx += xh * xh;
      tt += th * th;
      sx += xh;
      st += th;
    }
    return cosine_row(dot, xx, tt, sx, st, c.cosine);
  } else {
    const acc_t beta = c.beta, inv_beta = c.inv_beta;
    acc_t loss = 0, sg = 0, sgx = 0;
#pragma omp simd reduction(+ : loss, sg, sgx)
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t xh = (x[d] - xs) * xk, diff = xh - (t[d] - ts) * tk;
      const acc_t g = element_grad(kind, diff, beta, inv_beta);
      loss += element_loss(kind, diff, beta, inv_beta);
      sg += g;
      sgx += g * xh;
    }
    return {loss, sg, sgx};
  }
}

// dℓ/dx for every element of the row, through the prediction's normalization (align_loss_math.h).
template <LossKind kind, typename acc_t, typename pred_t>
FASTMIM_ALWAYS_INLINE void write_grad(const Row<acc_t>& xr, const Row<acc_t>& tr, int64_t dim,
                                      const LossTerms<acc_t>& c, const NormChain<acc_t>& chain, pred_t* out) {
  const acc_t *x = xr.x, *t = tr.x;
  const acc_t xs = xr.norm.shift, xk = xr.norm.scale, ts = tr.norm.shift, tk = tr.norm.scale;
  const acc_t beta = c.beta, inv_beta = c.inv_beta;
  const CosineTerms<acc_t> cosine = c.cosine;
#pragma omp simd
  for (int64_t d = 0; d < dim; ++d) {
    const acc_t xh = (x[d] - xs) * xk, th = (t[d] - ts) * tk;
    acc_t g;
    if constexpr (kind == LossKind::Cosine) {
      g = cosine_grad(xh, th, cosine);
    } else {
      g = element_grad(kind, xh - th, beta, inv_beta);
    }
    out[d] = static_cast<pred_t>(chain.apply(g, xh));
  }
}

// The row in the accumulation type: the tensor's own memory when it already is, else a converted copy.
template <typename acc_t, typename scalar_t>
FASTMIM_ALWAYS_INLINE const acc_t* as_acc(const scalar_t* src, int64_t dim, acc_t* buffer) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    for (int64_t d = 0; d < dim; ++d) buffer[d] = static_cast<acc_t>(src[d]);
    return buffer;
  }
}

// Everything a thread needs to process rows [begin, end) of the [L, B, R] prediction rows.
template <typename pred_t, typename target_t>
struct RowTask {
  using acc_t = at::opmath_type<pred_t>;
  const pred_t* pred;
  const target_t* target;
  const int64_t* row_ids;  // [B, R]: the target row of each prediction row
  acc_t* losses;
  pred_t* grad;  // null: loss only
  int64_t dim, rows, per_level;
  int64_t ps0, ps1, ps2, ts0, ts1, ts2;
  RowNorm target_norm, pred_norm;
  acc_t eps;
  LossTerms<acc_t> terms;
};

template <LossKind kind, typename pred_t, typename target_t>
FASTMIM_ALWAYS_INLINE void process_rows(const RowTask<pred_t, target_t>& k, int64_t begin, int64_t end,
                                        at::opmath_type<pred_t>* buffer) {
  using acc_t = at::opmath_type<pred_t>;
  const int64_t dim = k.dim, rows = k.rows;
  LossTerms<acc_t> c = k.terms;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t l = r / k.per_level, b = (r % k.per_level) / rows, j = r % rows;
    const int64_t t_row = target_row(k.row_ids, b, j, rows);  // in range: checked by forward_cpu
    const target_t* tsrc = k.target + l * k.ts0 + b * k.ts1 + t_row * k.ts2;
    const pred_t* psrc = k.pred + l * k.ps0 + b * k.ps1 + j * k.ps2;
    const Row<acc_t> t = row_stats(as_acc<acc_t>(tsrc, dim, buffer), dim, k.target_norm, k.eps);
    const Row<acc_t> x = row_stats(as_acc<acc_t>(psrc, dim, buffer + dim), dim, k.pred_norm, k.eps);
    const RowSums<acc_t> sums = row_sums<kind>(x, t, dim, c);
    k.losses[r] = sums.loss;
    if (k.grad == nullptr) continue;
    write_grad<kind>(x, t, dim, c, norm_chain(k.pred_norm, x.norm, sums, dim), k.grad + r * dim);
  }
}

template <typename pred_t, typename target_t>
void process_rows_any(LossKind kind, const RowTask<pred_t, target_t>& k, int64_t begin, int64_t end,
                      at::opmath_type<pred_t>* buffer) {
  switch (kind) {
    case LossKind::SmoothL1: return process_rows<LossKind::SmoothL1>(k, begin, end, buffer);
    case LossKind::L2: return process_rows<LossKind::L2>(k, begin, end, buffer);
    case LossKind::L1: return process_rows<LossKind::L1>(k, begin, end, buffer);
    case LossKind::Cosine: return process_rows<LossKind::Cosine>(k, begin, end, buffer);
  }
}

// float32 rows, the common case, compiled for AVX-512, AVX2 and baseline x86-64 (simd.h).
FASTMIM_CPU_CLONES void process_rows_f32(LossKind kind, const RowTask<float, float>& k, int64_t begin,
                                         int64_t end, float* buffer) {
  switch (kind) {
    case LossKind::SmoothL1: return process_rows<LossKind::SmoothL1>(k, begin, end, buffer);
    case LossKind::L2: return process_rows<LossKind::L2>(k, begin, end, buffer);
    case LossKind::L1: return process_rows<LossKind::L1>(k, begin, end, buffer);
    case LossKind::Cosine: return process_rows<LossKind::Cosine>(k, begin, end, buffer);
  }
}

template <typename pred_t, typename target_t>
void rows_typed(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& rows,
                const AlignLossShape& s, const AlignLossOptions& o, at::Tensor& row_loss, at::Tensor& grad) {
  using acc_t = at::opmath_type<pred_t>;
  RowTask<pred_t, target_t> k{pred.const_data_ptr<pred_t>(), target.const_data_ptr<target_t>(),
                              rows.const_data_ptr<int64_t>(), row_loss.mutable_data_ptr<acc_t>(),
                              grad.defined() ? grad.mutable_data_ptr<pred_t>() : nullptr,
                              s.dim, s.rows, s.batch * s.rows,
                              pred.stride(0), pred.stride(1), pred.stride(2),
                              target.stride(0), target.stride(1), target.stride(2),
                              o.target_norm, o.pred_norm, static_cast<acc_t>(o.eps), {}};
  k.terms.beta = static_cast<acc_t>(o.beta);
  k.terms.inv_beta = o.beta > 0 ? acc_t(1) / k.terms.beta : acc_t(0);
  at::parallel_for(0, s.levels * k.per_level, std::max<int64_t>(1, 16384 / std::max<int64_t>(s.dim, 1)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(2 * s.dim);
    if constexpr (std::is_same_v<pred_t, float> && std::is_same_v<target_t, float>) {
      process_rows_f32(o.loss, k, begin, end, buffer.data());
    } else {
      process_rows_any(o.loss, k, begin, end, buffer.data());
    }
  });
}

void rows(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& rows, const AlignLossShape& s,
          const AlignLossOptions& o, at::Tensor& row_loss, at::Tensor& grad) {
  FASTMIM_DISPATCH_CPU_FLOATS(pred.scalar_type(), "align_loss", [&] {
    using pred_t = scalar_t;
    FASTMIM_DISPATCH_CPU_FLOATS(target.scalar_type(), "align_loss", [&] {
      rows_typed<pred_t, scalar_t>(pred, target, rows, s, o, row_loss, grad);
    });
  });
}

template <typename scalar_t>
at::Tensor rescale_typed(const at::Tensor& level_scale, const at::Tensor& grad_row) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor out = at::empty(grad_row.sizes(), grad_row.options());
  const acc_t* scale = level_scale.const_data_ptr<acc_t>();
  const scalar_t* src = grad_row.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const int64_t per_level = grad_row.numel() / grad_row.size(0);
  at::parallel_for(0, grad_row.numel(), 32768, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t l = level_of(begin, per_level);
      const int64_t stop = std::min(end, (l + 1) * per_level);
      const acc_t f = scale[l];
      for (int64_t i = begin; i < stop; ++i) dst[i] = static_cast<scalar_t>(static_cast<acc_t>(src[i]) * f);
      begin = stop;
    }
  });
  return out;
}

at::Tensor rescale(const at::Tensor& level_scale, const at::Tensor& grad_row) {
  at::Tensor out;
  FASTMIM_DISPATCH_CPU_FLOATS(grad_row.scalar_type(), "align_loss_backward", [&] {
    out = rescale_typed<scalar_t>(level_scale, grad_row);
  });
  return out;
}

constexpr AlignLossPrimitives kCpu{rows, rescale};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& pred, const at::Tensor& target,
                                               const at::Tensor& rows, c10::string_view loss,
                                               c10::string_view target_norm, c10::string_view pred_norm,
                                               double beta, double eps, bool with_grad) {
  check_align_loss(pred, target, rows);  // the shapes first, so that a bad shape is named as such
  check_index_values(rows, target.size(2), "rows");
  return align_loss_forward(kCpu, pred, target, rows, loss, target_norm, pred_norm, beta, eps, with_grad);
}

at::Tensor backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_rows, c10::string_view loss) {
  return align_loss_backward(kCpu, grad_loss, grad_rows, loss);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CPU, m) {
  m.impl("align_loss", &fastmim::forward_cpu);
  m.impl("align_loss_backward", &fastmim::backward_cpu);
}
