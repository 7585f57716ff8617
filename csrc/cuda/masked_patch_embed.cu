// masked_patch_embed on CUDA: the gather, row-reduction and scatter primitives of the shared driver.
// The backward sums in a fixed order (no float atomics), so its gradients are the same from run to run.
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../common/dispatch.h"
#include "../common/masked_patch_embed_driver.h"
#include "utils.h"

namespace fastmim {
namespace {

using cuda::ceil_div;

constexpr int kThreads = 256;

// Sizes that index a patch or a row fit in int (checked on the host): 32-bit division in the kernels.
struct GatherArgs {
  PatchGeometry g;
  int kept, numel, n_patches;
  int64_t dim, bias_stride, pos_s0, pos_s1;
};

void check_int_sizes(const PatchEmbedShape& s) {
  constexpr int64_t limit = std::numeric_limits<int>::max();
  TORCH_CHECK_VALUE(s.batch * s.kept < limit && s.patch_numel() < limit && s.num_patches() < limit,
                    "images and ids_keep are too large for the CUDA kernels (", s.batch * s.kept,
                    " kept patches of ", s.patch_numel(), " values)");
}

// Values per access along the patch lines of `t`: a line must be one unit-stride run whose starts (every
// sample, patch row, patch column and channel) are aligned to the access. Patch size 14 in bf16 gives 2
// (4-byte accesses), channels-last patch-16 RGB lines (48 values) give 8.
int line_vector_width(const at::Tensor& t, const PatchEmbedShape& s) {
  const PatchGeometry g = patch_geometry(t, s);
  if (g.step() != 1) return 1;
  return cuda::vector_width(t, g.line_length(),
                            {g.stride_b, g.stride_h, g.patch * g.stride_w, g.channels_inner ? 0 : g.stride_c});
}

// One block per kept patch r = b*K + k: its C·p·p pixels (VEC at a time along a line) become row r of the
// GEMM operand, and when `out` is given, out[r] = bias + pos_embed[ids[r]] in the same pass. An index out of
// range is flagged for the host (device_errors.h) and its rows are NaN.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) gather_kernel(const scalar_t* __restrict__ images,
                                                          const int64_t* __restrict__ ids, GatherArgs a,
                                                          scalar_t* __restrict__ patches,
                                                          const scalar_t* __restrict__ bias,
                                                          const scalar_t* __restrict__ pos,
                                                          scalar_t* __restrict__ out, int* __restrict__ errors) {
  const int r = blockIdx.x;
  const int64_t n = ids[r];
  scalar_t* row = patches + static_cast<int64_t>(r) * a.numel;
  if (n < 0 || n >= a.n_patches) {
    if (threadIdx.x == 0) atomicOr(errors, static_cast<int>(cuda::kMaskedPatchEmbedIds));
    for (int e = threadIdx.x; e < a.numel; e += kThreads) row[e] = static_cast<scalar_t>(NAN);
    for (int64_t d = threadIdx.x; out != nullptr && d < a.dim; d += kThreads) {
      out[static_cast<int64_t>(r) * a.dim + d] = static_cast<scalar_t>(NAN);
    }
    return;
  }
  const scalar_t* patch = images + a.g.patch_origin(r / a.kept, static_cast<int>(n));
  for (int e = threadIdx.x * VEC; e < a.numel; e += kThreads * VEC) {
    cuda::copy_values<VEC>(row + e, patch + a.g.pixel_offset(e));
  }
  if (out == nullptr) return;
  for (int64_t d = threadIdx.x; d < a.dim; d += kThreads) {
    float v = 0.0f;
    if (bias != nullptr) v += static_cast<float>(bias[d * a.bias_stride]);
    if (pos != nullptr) v += static_cast<float>(pos[n * a.pos_s0 + d * a.pos_s1]);
    out[static_cast<int64_t>(r) * a.dim + d] = static_cast<scalar_t>(v);
  }
}

// Calls f(std::integral_constant<int, VEC>{}) for the runtime access width vec (≤ 16 bytes of scalar_t).
template <typename scalar_t, typename F>
void with_width(int vec, F&& f) {
  if constexpr (sizeof(scalar_t) <= 2) {
    if (vec == 8) return f(std::integral_constant<int, 8>{});
  }
  if constexpr (sizeof(scalar_t) <= 4) {
    if (vec == 4) return f(std::integral_constant<int, 4>{});
  }
  if (vec == 2) return f(std::integral_constant<int, 2>{});
  f(std::integral_constant<int, 1>{});
}

void gather(const at::Tensor& images, const at::Tensor& ids_keep, const PatchEmbedShape& s, at::Tensor& patches,
            const at::Tensor& bias, const at::Tensor& pos_embed, at::Tensor& out) {
  check_int_sizes(s);
  const GatherArgs a{patch_geometry(images, s), static_cast<int>(s.kept), static_cast<int>(s.patch_numel()),
                     static_cast<int>(s.num_patches()), s.dim,
                     bias.defined() ? bias.stride(0) : 0, pos_embed.defined() ? pos_embed.stride(0) : 0,
                     pos_embed.defined() ? pos_embed.stride(1) : 0};
  FASTMIM_DISPATCH_CUDA_FLOATS(images.scalar_type(), "masked_patch_embed_gather", [&] {
    const scalar_t* bias_p = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pos_p = pos_embed.defined() ? pos_embed.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_p = out.defined() ? out.mutable_data_ptr<scalar_t>() : nullptr;
    const dim3 grid(static_cast<unsigned>(s.batch * s.kept));
    with_width<scalar_t>(line_vector_width(images, s), [&](auto width) {
      FASTMIM_LAUNCH((gather_kernel<scalar_t, decltype(width)::value>), grid, kThreads, 0, cuda::stream())(
          images.const_data_ptr<scalar_t>(), ids_keep.const_data_ptr<int64_t>(), a,
          patches.mutable_data_ptr<scalar_t>(), bias_p, pos_p, out_p, cuda::error_flag_ptr(images));
      FASTMIM_LAUNCH_CHECK();
    });
  });
}

constexpr int kRowsPerBlock = 64;

// partial[slice, d] = Σ of column d over the slice's kRowsPerBlock rows; the slices are summed in order after.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) column_sums_kernel(const scalar_t* __restrict__ grad, int64_t rows,
                                                               int64_t dim, int64_t slices,
                                                               float* __restrict__ partial) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (d >= dim) return;
  for (int64_t slice = blockIdx.y; slice < slices; slice += gridDim.y) {
    const int64_t r0 = slice * kRowsPerBlock;
    const int64_t r1 = r0 + kRowsPerBlock < rows ? r0 + kRowsPerBlock : rows;
    float sum = 0.0f;
    for (int64_t r = r0; r < r1; ++r) sum += static_cast<float>(grad[r * dim + d]);
    partial[slice * dim + d] = sum;
  }
}

// grad_pos[n, d] = Σ grad[r, d] over the rows r that kept patch n, in the order of a stable sort of ids: grid
// row i is sorted position i, and the first position of each patch sums the rows of its run.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) pos_sums_kernel(const scalar_t* __restrict__ grad,
                                                            const int64_t* __restrict__ sorted,
                                                            const int64_t* __restrict__ order, int64_t rows,
                                                            int64_t dim, int64_t n_patches,
                                                            scalar_t* __restrict__ grad_pos,
                                                            int* __restrict__ errors) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (d >= dim) return;
  for (int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const int64_t n = sorted[i];
    if (i > 0 && sorted[i - 1] == n) continue;
    if (n < 0 || n >= n_patches) {
      if (d == 0) atomicOr(errors, static_cast<int>(cuda::kMaskedPatchEmbedIds));
      continue;
    }
    float sum = 0.0f;
    for (int64_t j = i; j < rows && sorted[j] == n; ++j) sum += static_cast<float>(grad[order[j] * dim + d]);
    grad_pos[n * dim + d] = static_cast<scalar_t>(sum);
  }
}

void reduce_rows(const at::Tensor& grad, const at::Tensor& ids_keep, const PatchEmbedShape& s,
                 at::Tensor& grad_bias, at::Tensor& grad_pos) {
  const int64_t rows = s.batch * s.kept;
  if (rows == 0 || s.dim == 0) {
    if (grad_bias.defined()) grad_bias.zero_();
    return;
  }
  const unsigned column_blocks = static_cast<unsigned>(ceil_div(s.dim, kThreads));
  FASTMIM_DISPATCH_CUDA_FLOATS(grad.scalar_type(), "masked_patch_embed_reduce_rows", [&] {
    if (grad_bias.defined()) {
      const int64_t slices = ceil_div(rows, kRowsPerBlock);
      at::Tensor partial = at::empty({slices, s.dim}, grad.options().dtype(at::kFloat));
      const dim3 grid(column_blocks, static_cast<unsigned>(std::min<int64_t>(slices, cuda::max_grid_y())));
      FASTMIM_LAUNCH(column_sums_kernel<scalar_t>, grid, kThreads, 0, cuda::stream())(
          grad.const_data_ptr<scalar_t>(), rows, s.dim, slices, partial.mutable_data_ptr<float>());
      FASTMIM_LAUNCH_CHECK();
      grad_bias.copy_(partial.sum(0));
    }
    if (grad_pos.defined()) {
      at::Tensor sorted, order;
      std::tie(sorted, order) = at::sort(ids_keep.reshape({-1}), /*stable=*/std::optional<bool>(true), 0);
      const dim3 grid(column_blocks, static_cast<unsigned>(std::min<int64_t>(rows, cuda::max_grid_y())));
      FASTMIM_LAUNCH(pos_sums_kernel<scalar_t>, grid, kThreads, 0, cuda::stream())(
          grad.const_data_ptr<scalar_t>(), sorted.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(), rows,
          s.dim, s.num_patches(), grad_pos.mutable_data_ptr<scalar_t>(), cuda::error_flag_ptr(grad));
      FASTMIM_LAUNCH_CHECK();
    }
  });
}

// Block (b, k) is position k of sample b's ids in stable sorted order. The first position of each patch adds
// the pixel gradients of every row that kept it, in order, and writes them into the zero-initialized image
// gradient: a patch kept twice is summed, never raced on.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) scatter_kernel(const scalar_t* __restrict__ grad_patches,
                                                           const int64_t* __restrict__ sorted,
                                                           const int64_t* __restrict__ order, PatchGeometry g,
                                                           int kept, int numel, int n_patches,
                                                           scalar_t* __restrict__ grad_images,
                                                           int* __restrict__ errors) {
  const int b = blockIdx.x / kept, k = blockIdx.x - b * kept;
  const int64_t* ids = sorted + static_cast<int64_t>(b) * kept;
  const int64_t n = ids[k];
  if (k > 0 && ids[k - 1] == n) return;
  if (n < 0 || n >= n_patches) {
    if (threadIdx.x == 0) atomicOr(errors, static_cast<int>(cuda::kMaskedPatchEmbedIds));
    return;
  }
  int run = 1;
  while (k + run < kept && ids[k + run] == n) ++run;
  scalar_t* patch = grad_images + g.patch_origin(b, static_cast<int>(n));
  const scalar_t* first = grad_patches + static_cast<int64_t>(b) * kept * numel;  // sample b's rows
  const int64_t* rows = order + static_cast<int64_t>(b) * kept + k;                // the run's rows in it
  for (int e = threadIdx.x * VEC; e < numel; e += kThreads * VEC) {
    float sum[VEC];
    cuda::load_floats<VEC>(first + rows[0] * numel + e, sum);
    for (int q = 1; q < run; ++q) {
      float v[VEC];
      cuda::load_floats<VEC>(first + rows[q] * numel + e, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) sum[i] += v[i];
    }
    cuda::store_floats<VEC>(patch + g.pixel_offset(e), sum);
  }
}

void scatter(const at::Tensor& grad_patches, const at::Tensor& ids_keep, const PatchEmbedShape& s,
             at::Tensor& grad_images) {
  check_int_sizes(s);
  at::Tensor sorted, order;
  std::tie(sorted, order) = at::sort(ids_keep, /*stable=*/std::optional<bool>(true), /*dim=*/1);
  FASTMIM_DISPATCH_CUDA_FLOATS(grad_patches.scalar_type(), "masked_patch_embed_scatter", [&] {
    with_width<scalar_t>(line_vector_width(grad_images, s), [&](auto width) {
      FASTMIM_LAUNCH((scatter_kernel<scalar_t, decltype(width)::value>), static_cast<unsigned>(s.batch * s.kept),
                     kThreads, 0, cuda::stream())(
          grad_patches.const_data_ptr<scalar_t>(), sorted.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(),
          patch_geometry(grad_images, s), static_cast<int>(s.kept), static_cast<int>(s.patch_numel()),
          static_cast<int>(s.num_patches()), grad_images.mutable_data_ptr<scalar_t>(),
          cuda::error_flag_ptr(grad_images));
      FASTMIM_LAUNCH_CHECK();
    });
  });
}

constexpr PatchEmbedPrimitives kCuda{gather, reduce_rows, scatter};

void check_cuda_dtypes(const at::Tensor& images) { FASTMIM_CHECK_CUDA_FLOATING(images); }

at::Tensor forward_cuda(const at::Tensor& images, const at::Tensor& ids_keep, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed) {
  check_cuda_dtypes(images);
  return masked_patch_embed_forward(kCuda, images, ids_keep, weight, bias, pos_embed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out,
                                                                         const at::Tensor& images,
                                                                         const at::Tensor& ids_keep,
                                                                         const at::Tensor& weight,
                                                                         std::array<bool, 4> output_mask) {
  check_cuda_dtypes(images);
  return masked_patch_embed_backward(kCuda, grad_out, images, ids_keep, weight, output_mask);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(FASTMIM_CUDA_LIBRARY, FASTMIM_CUDA_KEY, m) {
  m.impl("masked_patch_embed", &fastmim::forward_cuda);
  m.impl("masked_patch_embed_backward", &fastmim::backward_cuda);
}
