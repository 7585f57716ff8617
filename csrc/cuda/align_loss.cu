// align_loss on CUDA: one warp per prediction row. The warp gathers the row's target row by index,
// normalizes it (and the prediction when asked), and writes the row loss and d(row loss)/d(pred); the
// row is re-read from L1/L2 between the passes instead of being kept in registers, so any D fits.
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../common/align_loss_driver.h"
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
  int64_t dim, patches;
  int64_t ps0, ps1, ps2, ts0, ts1, ts2;
  LossKind loss;
  RowNorm target_norm, pred_norm;
  float beta, inv_beta, eps;
};

// (shift, scale) with normalized = (x - shift) · scale, over the row x of `dim` values; lanes stride by VEC.
template <int VEC, typename T>
__device__ __forceinline__ void row_stats(const T* x, int64_t dim, RowNorm norm, float eps, float& shift,
                                          float& scale, bool& clamped) {
  shift = 0.0f;
  scale = 1.0f;
  clamped = false;
  if (norm == RowNorm::None) return;
  const int lane = threadIdx.x % kWarp;
  float sum = 0.0f;
  if (norm == RowNorm::LayerNorm) {
    for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
      float v[VEC];
      load_floats<VEC>(x + d, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum += v[i];
    }
    shift = warp_sum(sum) / static_cast<float>(dim);
    sum = 0.0f;
  }
  for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
    float v[VEC];
    load_floats<VEC>(x + d, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) sum += (v[i] - shift) * (v[i] - shift);
  }
  sum = warp_sum(sum);
  if (norm == RowNorm::LayerNorm) {
    scale = rsqrtf(sum / static_cast<float>(dim) + eps);
  } else {
    const float n = sqrtf(sum);
    clamped = !(n > static_cast<float>(kL2NormEps));
    scale = 1.0f / (clamped ? static_cast<float>(kL2NormEps) : n);
  }
}

template <typename pred_t, typename target_t, int VEC>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock) rows_kernel(const pred_t* __restrict__ pred,
                                                                     const target_t* __restrict__ target,
                                                                     const int64_t* __restrict__ ids, RowArgs a,
                                                                     float* __restrict__ row_loss,
                                                                     pred_t* __restrict__ grad) {
  const int lane = threadIdx.x % kWarp;
  const int r = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  const int per_level = a.batch * a.rows;
  if (r >= a.levels * per_level) return;  // whole warps leave together
  const int l = r / per_level, b = (r - l * per_level) / a.rows, j = r - (r / a.rows) * a.rows;
  if (j > 0) FASTMIM_DEVICE_CHECK_INDEX(ids_keep, ids[b * (a.rows - 1) + j - 1], a.patches);
  const target_t* t = target + l * a.ts0 + b * a.ts1 + target_row(ids, b, j, a.rows - 1) * a.ts2;
  const pred_t* x = pred + l * a.ps0 + b * a.ps1 + j * a.ps2;
  const int64_t dim = a.dim;

  float t_shift, t_scale, x_shift, x_scale;
  bool t_clamped, x_clamped;
  row_stats<VEC>(t, dim, a.target_norm, a.eps, t_shift, t_scale, t_clamped);
  row_stats<VEC>(x, dim, a.pred_norm, a.eps, x_shift, x_scale, x_clamped);

  // Pass over the normalized rows: elementwise losses sum loss, Σg, Σg·x̂;
  // cosine sums x̂·t, |x̂|², |t|², Σx̂, Σt.
  const bool cosine = a.loss == LossKind::Cosine;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f;
  for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
    float xv[VEC], tv[VEC];
    load_floats<VEC>(x + d, xv);
    load_floats<VEC>(t + d, tv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xh = (xv[i] - x_shift) * x_scale, th = (tv[i] - t_shift) * t_scale;
      if (cosine) {
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
  s0 = warp_sum(s0);
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  float loss = s0, sum_g = s1, sum_gx = s2, ca = 0.0f, cb = 0.0f;
  if (cosine) {
    s3 = warp_sum(s3);
    s4 = warp_sum(s4);
    const float eps = static_cast<float>(kCosineEps);
    const float nx = sqrtf(s1), nt = sqrtf(s2);
    const float cx = nx > eps ? nx : eps, ct = nt > eps ? nt : eps;
    const float cos = s0 / (cx * ct);
    ca = 1.0f / (cx * ct);
    cb = nx > eps ? cos / (cx * cx) : 0.0f;
    loss = 1.0f - cos;
    sum_g = s3 * cb - s4 * ca;
    sum_gx = s1 * cb - s0 * ca;
  }
  if (lane == 0) row_loss[r] = loss;
  if (grad == nullptr) return;

  // dℓ/dx = scale · (dℓ/dx̂ - shift - x̂ · coef) through the prediction's normalization.
  float scale = 1.0f, shift = 0.0f, coef = 0.0f;
  if (a.pred_norm == RowNorm::LayerNorm) {
    scale = x_scale;
    shift = sum_g / static_cast<float>(dim);
    coef = sum_gx / static_cast<float>(dim);
  } else if (a.pred_norm == RowNorm::L2) {
    scale = x_scale;
    coef = x_clamped ? 0.0f : sum_gx;
  }
  pred_t* out = grad + static_cast<int64_t>(r) * dim;
  for (int64_t d = lane * VEC; d < dim; d += kWarp * VEC) {
    float xv[VEC], tv[VEC], gv[VEC];
    load_floats<VEC>(x + d, xv);
    load_floats<VEC>(t + d, tv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xh = (xv[i] - x_shift) * x_scale, th = (tv[i] - t_shift) * t_scale;
      const float g = cosine ? xh * cb - th * ca : element_grad(a.loss, xh - th, a.beta, a.inv_beta);
      gv[i] = scale * (g - shift - xh * coef);
    }
    store_floats<VEC>(out + d, gv);
  }
}

constexpr int kVec = 8;  // 16 bytes of a 16-bit type, 32 of float

void rows(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& ids_keep, const AlignLossShape& s,
          const AlignLossOptions& o, at::Tensor& row_loss, at::Tensor& grad) {
  TORCH_CHECK_VALUE(s.levels * s.batch * s.rows < std::numeric_limits<int>::max(),
                    "pred has too many rows for the CUDA kernel: ", s.levels * s.batch * s.rows);
  const RowArgs a{static_cast<int>(s.levels), static_cast<int>(s.batch), static_cast<int>(s.rows), s.dim,
                  s.target_rows - 1,
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
      if (packed) {
        rows_kernel<pred_t, target_t, kVec><<<grid, kWarp * kWarpsPerBlock, 0, cuda::stream()>>>(
            pred.const_data_ptr<pred_t>(), target.const_data_ptr<target_t>(), ids_keep.const_data_ptr<int64_t>(),
            a, row_loss.mutable_data_ptr<float>(), grad_p);
      } else {
        rows_kernel<pred_t, target_t, 1><<<grid, kWarp * kWarpsPerBlock, 0, cuda::stream()>>>(
            pred.const_data_ptr<pred_t>(), target.const_data_ptr<target_t>(), ids_keep.const_data_ptr<int64_t>(),
            a, row_loss.mutable_data_ptr<float>(), grad_p);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

constexpr int kThreads = 256;

// grad_pred = grad_row · level_scale[level]; blockIdx.y is the level, so no element needs a division.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) rescale_kernel(const scalar_t* __restrict__ src,
                                                           const float* __restrict__ level_scale,
                                                           int64_t per_level, scalar_t* __restrict__ dst) {
  const float f = level_scale[blockIdx.y];
  const int64_t base = static_cast<int64_t>(blockIdx.y) * per_level;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * VEC;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC; i < per_level; i += stride) {
    float v[VEC];
    load_floats<VEC>(src + base + i, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] *= f;
    store_floats<VEC>(dst + base + i, v);
  }
}

at::Tensor rescale(const at::Tensor& level_scale, const at::Tensor& grad_row) {
  at::Tensor out = at::empty(grad_row.sizes(), grad_row.options());
  const int64_t levels = grad_row.size(0), per_level = grad_row.numel() / levels;
  TORCH_CHECK_VALUE(levels < 65536, "pred has too many levels for the CUDA kernel: ", levels);
  FASTMIM_DISPATCH_CUDA_FLOATS(grad_row.scalar_type(), "align_loss_backward", [&] {
    constexpr int vec = 16 / sizeof(scalar_t);
    const bool packed = per_level % vec == 0;  // fresh contiguous tensors are aligned
    const int64_t blocks = std::min<int64_t>(ceil_div(per_level, kThreads * (packed ? vec : 1)), 4096);
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(levels));
    if (packed) {
      rescale_kernel<scalar_t, vec><<<grid, kThreads, 0, cuda::stream()>>>(
          grad_row.const_data_ptr<scalar_t>(), level_scale.const_data_ptr<float>(), per_level,
          out.mutable_data_ptr<scalar_t>());
    } else {
      rescale_kernel<scalar_t, 1><<<grid, kThreads, 0, cuda::stream()>>>(
          grad_row.const_data_ptr<scalar_t>(), level_scale.const_data_ptr<float>(), per_level,
          out.mutable_data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

constexpr AlignLossPrimitives kCuda{rows, rescale};

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& pred, const at::Tensor& target,
                                                const at::Tensor& ids_keep, c10::string_view loss,
                                                c10::string_view target_norm, c10::string_view pred_norm,
                                                double beta, double eps, bool with_grad) {
  FASTMIM_CHECK_CUDA_FLOATING(pred);
  FASTMIM_CHECK_CUDA_FLOATING(target);
  const c10::cuda::CUDAGuard guard(pred.device());
  return align_loss_forward(kCuda, pred, target, ids_keep, loss, target_norm, pred_norm, beta, eps, with_grad);
}

at::Tensor backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad_rows, c10::string_view loss) {
  FASTMIM_CHECK_CUDA_FLOATING(grad_rows);
  const c10::cuda::CUDAGuard guard(grad_rows.device());
  return align_loss_backward(kCuda, grad_loss, grad_rows, loss);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CUDA, m) {
  m.impl("align_loss", &fastmim::forward_cuda);
  m.impl("align_loss_backward", &fastmim::backward_cuda);
}
