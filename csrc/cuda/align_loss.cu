// align_loss on CUDA: one warp per prediction row. The warp gathers the row's target row (rows[b, j]),
// normalizes it (and the prediction when asked), and writes the row loss and d(row loss)/d(pred); the
// row is re-read from L1/L2 between the passes instead of being kept in registers, so any D fits.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/align_loss_driver.h"
#include "../common/align_loss_math.h"
#include "../common/dispatch.h"
#include "utils.h"

namespace fastmim {
namespace {

using cuda::ceil_div;
using cuda::kWarp;
using cuda::load_floats;
using cuda::store_floats;
using cuda::warp_sum;

constexpr int kWarpsPerBlock = 8;

// Row counts fit in int (checked on the host), so the row decomposition uses 32-bit division.
struct RowArgs {
  int levels, batch, rows;
  int64_t dim, target_rows;
  int64_t ps0, ps1, ps2, ts0, ts1, ts2;
  LossKind loss;
  RowNorm target_norm, pred_norm;
  float beta, inv_beta, eps;
};

// The normalization of the row x of `dim` values (align_loss_math.h); lanes stride by VEC.
template <int VEC, typename T>
__device__ __forceinline__ RowScale<float> row_stats(const T* x, int64_t dim, RowNorm norm, float eps) {
  if (norm == RowNorm::None) return {};
  const int lane = threadIdx.x % kWarp;
  float mean = 0.0f;
  if (norm == RowNorm::LayerNorm) {
    float sum = 0.0f;
    for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
      float v[VEC];
      load_floats<VEC>(x + d, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum += v[i];
    }
    mean = divide(warp_sum(sum), static_cast<float>(dim));
  }
  float squares = 0.0f;
  for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
    float v[VEC];
    load_floats<VEC>(x + d, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) squares += (v[i] - mean) * (v[i] - mean);
  }
  return row_scale(norm, mean, warp_sum(squares), dim, eps);
}

// COSINE: the cosine loss's row sums instead of the elementwise losses' (a compile-time choice: as a runtime
// branch it cost sm_90 a register spill).
template <typename pred_t, typename target_t, int VEC, bool COSINE>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock) rows_kernel(const pred_t* __restrict__ pred,
                                                                     const target_t* __restrict__ target,
                                                                     const int64_t* __restrict__ row_ids, RowArgs a,
                                                                     float* __restrict__ row_loss,
                                                                     pred_t* __restrict__ grad,
                                                                     int* __restrict__ errors) {
  // No lane leaves before the last shuffle (the compiler cannot tell that the exits below are warp-uniform,
  // and guards every shuffle after one with a divergent-path subroutine): a warp past the last row works on
  // the last row and writes nothing, a row with an out-of-range index reads row 0 and is flagged.
  const int lane = threadIdx.x % kWarp;
  const int per_level = a.batch * a.rows, total = a.levels * per_level;
  const int r = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  const bool live = r < total;
  const int row = live ? r : total - 1;
  const int l = row / per_level, b = (row - l * per_level) / a.rows, j = row - (row / a.rows) * a.rows;
  const int64_t dim = a.dim;
  const int64_t wanted = target_row(row_ids, b, j, a.rows);
  const bool bad = wanted < 0 || wanted >= a.target_rows;  // flagged for the host: NaN loss, zero gradient
  const target_t* t = target + l * a.ts0 + b * a.ts1 + (bad ? 0 : wanted) * a.ts2;
  const pred_t* x = pred + l * a.ps0 + b * a.ps1 + j * a.ps2;

  const RowScale<float> tn = row_stats<VEC>(t, dim, a.target_norm, a.eps);
  const RowScale<float> xn = row_stats<VEC>(x, dim, a.pred_norm, a.eps);

  // Pass over the normalized rows: elementwise losses sum loss, Σg, Σg·x̂;
  // cosine sums x̂·t̂, |x̂|², |t̂|², Σx̂, Σt̂.
  constexpr bool cosine = COSINE;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f;
  for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
    float xv[VEC], tv[VEC];
    load_floats<VEC>(x + d, xv);
    load_floats<VEC>(t + d, tv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xh = (xv[i] - xn.shift) * xn.scale, th = (tv[i] - tn.shift) * tn.scale;
      if constexpr (cosine) {
        s0 += xh * th;
        s1 += xh * xh;
        s2 += th * th;
        s3 += xh;
        s4 += th;
      } else {
        const float diff = xh - th, g = element_grad(a.loss, diff, a.beta, a.inv_beta);
        s0 += element_loss(a.loss, diff, a.beta, a.inv_beta);
        s1 += g;
        s2 += g * xh;
      }
    }
  }
  RowSums<float> sums{warp_sum(s0), warp_sum(s1), warp_sum(s2)};
  CosineTerms<float> terms;
  if constexpr (cosine) sums = cosine_row(sums.loss, sums.g, sums.gx, warp_sum(s3), warp_sum(s4), terms);
  if (lane == 0 && live) {
    row_loss[r] = bad ? NAN : sums.loss;
    if (bad) atomicOr(errors, static_cast<int>(cuda::kAlignLossRows));
  }
  if (grad == nullptr || !live) return;

  pred_t* out = grad + static_cast<int64_t>(r) * dim;
  const NormChain<float> chain = norm_chain(a.pred_norm, xn, sums, dim);
  for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
    float xv[VEC], tv[VEC], gv[VEC];
    load_floats<VEC>(x + d, xv);
    load_floats<VEC>(t + d, tv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xh = (xv[i] - xn.shift) * xn.scale, th = (tv[i] - tn.shift) * tn.scale;
      const float g = cosine ? cosine_grad(xh, th, terms) : element_grad(a.loss, xh - th, a.beta, a.inv_beta);
      gv[i] = bad ? 0.0f : chain.apply(g, xh);
    }
    store_floats<VEC>(out + d, gv);
  }
}

constexpr int kVec = 8;  // 16 bytes of a 16-bit type, 32 of float

void rows(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& rows, const AlignLossShape& s,
          const AlignLossOptions& o, at::Tensor& row_loss, at::Tensor& grad) {
  TORCH_CHECK_VALUE(s.levels * s.batch * s.rows < std::numeric_limits<int>::max(),
                    "pred has too many rows for the CUDA kernel: ", s.levels * s.batch * s.rows);
  const RowArgs a{static_cast<int>(s.levels), static_cast<int>(s.batch), static_cast<int>(s.rows), s.dim,
                  s.target_rows,
                  pred.stride(0), pred.stride(1), pred.stride(2), target.stride(0), target.stride(1),
                  target.stride(2), o.loss, o.target_norm, o.pred_norm,
                  static_cast<float>(o.beta), o.beta > 0 ? static_cast<float>(1.0 / o.beta) : 0.0f,
                  static_cast<float>(o.eps)};
  const bool packed = s.dim % kVec == 0 && cuda::packable(pred, kVec, {a.ps0, a.ps1, a.ps2}) &&
                      cuda::packable(target, kVec, {a.ts0, a.ts1, a.ts2});
  const int64_t nrows = s.levels * s.batch * s.rows;
  const dim3 grid(static_cast<unsigned>(ceil_div(nrows, kWarpsPerBlock)));
  FASTMIM_DISPATCH_CUDA_FLOATS(pred.scalar_type(), "align_loss", [&] {
    using pred_t = scalar_t;
    FASTMIM_DISPATCH_CUDA_FLOATS(target.scalar_type(), "align_loss", [&] {
      using target_t = scalar_t;
      pred_t* grad_p = grad.defined() ? grad.mutable_data_ptr<pred_t>() : nullptr;
      const bool cosine = o.loss == LossKind::Cosine;
      auto kernel = packed ? (cosine ? rows_kernel<pred_t, target_t, kVec, true> : rows_kernel<pred_t, target_t, kVec, false>)
                           : (cosine ? rows_kernel<pred_t, target_t, 1, true> : rows_kernel<pred_t, target_t, 1, false>);
      FASTMIM_LAUNCH(kernel, grid, kWarp * kWarpsPerBlock, 0, cuda::stream())(
          pred.const_data_ptr<pred_t>(), target.const_data_ptr<target_t>(), rows.const_data_ptr<int64_t>(), a,
          row_loss.mutable_data_ptr<float>(), grad_p, cuda::error_flag_ptr(pred));
      FASTMIM_LAUNCH_CHECK();
    });
  });
}

constexpr int kThreads = 256;

// grad_pred = grad_row · level_scale[level]; grid rows walk the levels, so no element needs a division.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) rescale_kernel(const scalar_t* __restrict__ src,
                                                           const float* __restrict__ level_scale, int64_t levels,
                                                           int64_t per_level, scalar_t* __restrict__ dst) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * VEC;
  for (int64_t level = blockIdx.y; level < levels; level += gridDim.y) {
    const float f = level_scale[level];
    const int64_t base = level * per_level;
    for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC; i < per_level;
         i += stride) {
      float v[VEC];
      load_floats<VEC>(src + base + i, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] *= f;
      store_floats<VEC>(dst + base + i, v);
    }
  }
}

at::Tensor rescale(const at::Tensor& level_scale, const at::Tensor& grad_row) {
  at::Tensor out = at::empty(grad_row.sizes(), grad_row.options());
  const int64_t levels = grad_row.size(0), per_level = grad_row.numel() / levels;
  FASTMIM_DISPATCH_CUDA_FLOATS(grad_row.scalar_type(), "align_loss_backward", [&] {
    // grad_row may be a view at any offset: the width follows its alignment (fresh `out` is aligned).
    const int vec = cuda::vector_width(grad_row, per_level, {per_level});
    const int64_t blocks = std::min<int64_t>(ceil_div(per_level, kThreads * vec), 4096);
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(std::min<int64_t>(levels, cuda::max_grid_y())));
    auto kernel = rescale_kernel<scalar_t, 1>;
    if (vec == 16 / static_cast<int>(sizeof(scalar_t))) kernel = rescale_kernel<scalar_t, 16 / sizeof(scalar_t)>;
    else if (vec == 8 / static_cast<int>(sizeof(scalar_t))) kernel = rescale_kernel<scalar_t, 8 / sizeof(scalar_t)>;
    else if (vec > 1) kernel = rescale_kernel<scalar_t, 4 / sizeof(scalar_t)>;
    FASTMIM_LAUNCH(kernel, grid, kThreads, 0, cuda::stream())(grad_row.const_data_ptr<scalar_t>(),
                                                              level_scale.const_data_ptr<float>(), levels, per_level,
                                                              out.mutable_data_ptr<scalar_t>());
    FASTMIM_LAUNCH_CHECK();
  });
  return out;
}

constexpr AlignLossPrimitives kCuda{rows, rescale};

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& pred, const at::Tensor& target,
                                                const at::Tensor& rows, c10::string_view loss,
                                                c10::string_view target_norm, c10::string_view pred_norm,
                                                double beta, double eps, bool with_grad) {
  FASTMIM_CHECK_CUDA_FLOATING(pred);
  FASTMIM_CHECK_CUDA_FLOATING(target);
  return align_loss_forward(kCuda, pred, target, rows, loss, target_norm, pred_norm, beta, eps, with_grad);
}

at::Tensor backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad_rows, c10::string_view loss) {
  FASTMIM_CHECK_CUDA_FLOATING(grad_rows);
  return align_loss_backward(kCuda, grad_loss, grad_rows, loss);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(FASTMIM_CUDA_LIBRARY, FASTMIM_CUDA_KEY, m) {
  m.impl("align_loss", &fastmim::forward_cuda);
  m.impl("align_loss_backward", &fastmim::backward_cuda);
}
