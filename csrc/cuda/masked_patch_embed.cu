// masked_patch_embed on CUDA: the gather, row-reduction and scatter primitives of the shared driver.
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>

#include "../common/dispatch.h"
#include "../common/masked_patch_embed_driver.h"
#include "utils.h"

namespace fastmim {
namespace {

using cuda::ceil_div;
using cuda::Pack;

constexpr int kThreads = 256;

PatchGeometry geometry(const at::Tensor& images, const PatchEmbedShape& s) {
  return {s.patch, s.grid_w, images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
}

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

// One block per kept patch r = b*K + k: its C·p·p pixels (VEC at a time along a pixel line) become row r of
// the GEMM operand, and when `out` is given, out[r] = bias + pos_embed[ids[r]] in the same pass.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) gather_kernel(const scalar_t* __restrict__ images,
                                                          const int64_t* __restrict__ ids, GatherArgs a,
                                                          scalar_t* __restrict__ patches,
                                                          const scalar_t* __restrict__ bias,
                                                          const scalar_t* __restrict__ pos,
                                                          scalar_t* __restrict__ out) {
  const int r = blockIdx.x;
  const int64_t n = ids[r];
  FASTMIM_DEVICE_CHECK_INDEX(ids_keep, n, a.n_patches);
  const scalar_t* patch = images + a.g.patch_origin(r / a.kept, static_cast<int>(n));
  scalar_t* row = patches + static_cast<int64_t>(r) * a.numel;
  for (int e = threadIdx.x * VEC; e < a.numel; e += kThreads * VEC) {
    if constexpr (VEC == 1) {
      row[e] = patch[a.g.pixel_offset(e)];
    } else {
      *reinterpret_cast<Pack<scalar_t, VEC>*>(row + e) =
          *reinterpret_cast<const Pack<scalar_t, VEC>*>(patch + a.g.pixel_offset(e));
    }
  }
  if (out == nullptr) return;
  for (int64_t d = threadIdx.x; d < a.dim; d += kThreads) {
    float v = 0.0f;
    if (bias != nullptr) v += static_cast<float>(bias[d * a.bias_stride]);
    if (pos != nullptr) v += static_cast<float>(pos[n * a.pos_s0 + d * a.pos_s1]);
    out[static_cast<int64_t>(r) * a.dim + d] = static_cast<scalar_t>(v);
  }
}

void gather(const at::Tensor& images, const at::Tensor& ids_keep, const PatchEmbedShape& s, at::Tensor& patches,
            const at::Tensor& bias, const at::Tensor& pos_embed, at::Tensor& out) {
  check_int_sizes(s);
  const GatherArgs a{geometry(images, s), static_cast<int>(s.kept), static_cast<int>(s.patch_numel()),
                     static_cast<int>(s.num_patches()), s.dim,
                     bias.defined() ? bias.stride(0) : 0, pos_embed.defined() ? pos_embed.stride(0) : 0,
                     pos_embed.defined() ? pos_embed.stride(1) : 0};
  FASTMIM_DISPATCH_CUDA_FLOATS(images.scalar_type(), "masked_patch_embed_gather", [&] {
    constexpr int vec = 16 / sizeof(scalar_t);
    const bool packed = images.stride(3) == 1 && s.patch % vec == 0 &&
                        cuda::packable(images, vec, {images.stride(0), images.stride(1), images.stride(2)});
    const scalar_t* bias_p = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pos_p = pos_embed.defined() ? pos_embed.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_p = out.defined() ? out.mutable_data_ptr<scalar_t>() : nullptr;
    const dim3 grid(static_cast<unsigned>(s.batch * s.kept));
    if (packed) {
      gather_kernel<scalar_t, vec><<<grid, kThreads, 0, cuda::stream()>>>(
          images.const_data_ptr<scalar_t>(), ids_keep.const_data_ptr<int64_t>(), a,
          patches.mutable_data_ptr<scalar_t>(), bias_p, pos_p, out_p);
    } else {
      gather_kernel<scalar_t, 1><<<grid, kThreads, 0, cuda::stream()>>>(
          images.const_data_ptr<scalar_t>(), ids_keep.const_data_ptr<int64_t>(), a,
          patches.mutable_data_ptr<scalar_t>(), bias_p, pos_p, out_p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

constexpr int kRowsPerBlock = 64;

// Thread = column d, block row = a slice of kRowsPerBlock rows: the bias gradient sums in a register, the
// position-embedding gradient accumulates by atomics (the same patch may be kept by several samples).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) reduce_rows_kernel(const scalar_t* __restrict__ grad,
                                                               const int64_t* __restrict__ ids, int64_t rows,
                                                               int64_t dim, int64_t n_patches,
                                                               float* __restrict__ bias_acc,
                                                               float* __restrict__ pos_acc) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (d >= dim) return;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int64_t r1 = r0 + kRowsPerBlock < rows ? r0 + kRowsPerBlock : rows;
  float sum = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float v = static_cast<float>(grad[r * dim + d]);
    sum += v;
    if (pos_acc != nullptr) {
      const int64_t n = ids[r];
      FASTMIM_DEVICE_CHECK_INDEX(ids_keep, n, n_patches);
      atomicAdd(pos_acc + n * dim + d, v);
    }
  }
  if (bias_acc != nullptr) atomicAdd(bias_acc + d, sum);
}

void reduce_rows(const at::Tensor& grad, const at::Tensor& ids_keep, const PatchEmbedShape& s,
                 at::Tensor& grad_bias, at::Tensor& grad_pos) {
  const auto f32 = grad.options().dtype(at::kFloat);
  at::Tensor bias_acc = grad_bias.defined() ? at::zeros({s.dim}, f32) : at::Tensor();
  at::Tensor pos_acc = grad_pos.defined() ? at::zeros({s.num_patches(), s.dim}, f32) : at::Tensor();
  const int64_t rows = s.batch * s.kept;
  if (rows > 0 && s.dim > 0) {
    const dim3 grid(static_cast<unsigned>(ceil_div(s.dim, kThreads)),
                    static_cast<unsigned>(ceil_div(rows, kRowsPerBlock)));
    FASTMIM_DISPATCH_CUDA_FLOATS(grad.scalar_type(), "masked_patch_embed_reduce_rows", [&] {
      reduce_rows_kernel<scalar_t><<<grid, kThreads, 0, cuda::stream()>>>(
          grad.const_data_ptr<scalar_t>(), ids_keep.const_data_ptr<int64_t>(), rows, s.dim, s.num_patches(),
          bias_acc.defined() ? bias_acc.mutable_data_ptr<float>() : nullptr,
          pos_acc.defined() ? pos_acc.mutable_data_ptr<float>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (grad_bias.defined()) grad_bias.copy_(bias_acc);
  if (grad_pos.defined()) grad_pos.copy_(pos_acc);
}

// One block per kept patch: its pixel gradients are added into the (float) image gradient; atomics keep a
// patch kept twice by the same sample correct.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) scatter_kernel(const scalar_t* __restrict__ grad_patches,
                                                           const int64_t* __restrict__ ids, PatchGeometry g,
                                                           int kept, int numel, int n_patches,
                                                           float* __restrict__ grad_images) {
  const int r = blockIdx.x;
  const int64_t n = ids[r];
  FASTMIM_DEVICE_CHECK_INDEX(ids_keep, n, n_patches);
  float* patch = grad_images + g.patch_origin(r / kept, static_cast<int>(n));
  const scalar_t* row = grad_patches + static_cast<int64_t>(r) * numel;
  for (int e = threadIdx.x; e < numel; e += kThreads) {
    atomicAdd(patch + g.pixel_offset(e), static_cast<float>(row[e]));
  }
}

void scatter(const at::Tensor& grad_patches, const at::Tensor& ids_keep, const PatchEmbedShape& s,
             at::Tensor& grad_images) {
  at::Tensor acc = grad_images.scalar_type() == at::kFloat
                       ? grad_images
                       : at::zeros(grad_images.sizes(), grad_images.options().dtype(at::kFloat));
  check_int_sizes(s);
  FASTMIM_DISPATCH_CUDA_FLOATS(grad_patches.scalar_type(), "masked_patch_embed_scatter", [&] {
    scatter_kernel<scalar_t><<<static_cast<unsigned>(s.batch * s.kept), kThreads, 0, cuda::stream()>>>(
        grad_patches.const_data_ptr<scalar_t>(), ids_keep.const_data_ptr<int64_t>(), geometry(acc, s),
        static_cast<int>(s.kept), static_cast<int>(s.patch_numel()), static_cast<int>(s.num_patches()),
        acc.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!acc.is_same(grad_images)) grad_images.copy_(acc);
}

constexpr PatchEmbedPrimitives kCuda{gather, reduce_rows, scatter};

void check_cuda_dtypes(const at::Tensor& images) { FASTMIM_CHECK_CUDA_FLOATING(images); }

at::Tensor forward_cuda(const at::Tensor& images, const at::Tensor& ids_keep, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed) {
  check_cuda_dtypes(images);
  const c10::cuda::CUDAGuard guard(images.device());
  return masked_patch_embed_forward(kCuda, images, ids_keep, weight, bias, pos_embed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out,
                                                                         const at::Tensor& images,
                                                                         const at::Tensor& ids_keep,
                                                                         const at::Tensor& weight,
                                                                         std::array<bool, 4> output_mask) {
  check_cuda_dtypes(images);
  const c10::cuda::CUDAGuard guard(images.device());
  return masked_patch_embed_backward(kCuda, grad_out, images, ids_keep, weight, output_mask);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CUDA, m) {
  m.impl("masked_patch_embed", &fastmim::forward_cuda);
  m.impl("masked_patch_embed_backward", &fastmim::backward_cuda);
}
