// dynamic_align on CUDA: the level-mixing kernel and the mix-weight gradient reduction of the shared driver.
#include <torch/library.h>

#include "../common/dispatch.h"
#include "../common/dynamic_align_driver.h"
#include "utils.h"

namespace fastmim {
namespace {

using cuda::ceil_div;
using cuda::load_floats;
using cuda::store_floats;

constexpr int64_t kSharedBytes = 48 * 1024;  // the default dynamic shared-memory limit of a block

// out[l, c..c+VEC) = Σ_s mix[l, s] · in[s, c..c+VEC). Each thread reads its columns of the S input levels
// once, parking them (as float) in its own shared-memory slots, then writes all L output levels from there.
// Slot (s, v) of thread t sits at [(s·VEC + v)·blockDim + t]: consecutive threads, consecutive banks.
template <typename scalar_t, int VEC>
__global__ void mix_kernel(const scalar_t* __restrict__ in, int64_t in_stride, const float* __restrict__ mix,
                           int levels_in, int levels_out, int64_t cols, scalar_t* __restrict__ out,
                           int64_t out_stride) {
  extern __shared__ float staged[];
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (c >= cols) return;
  const int threads = blockDim.x;
  float* mine = staged + threadIdx.x;
  for (int s = 0; s < levels_in; ++s) {
    float v[VEC];
    load_floats<VEC>(in + s * in_stride + c, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) mine[(s * VEC + i) * threads] = v[i];
  }
  for (int l = 0; l < levels_out; ++l) {
    float acc[VEC] = {};
    for (int s = 0; s < levels_in; ++s) {
      const float w = __ldg(mix + l * levels_in + s);
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] += w * mine[(s * VEC + i) * threads];
    }
    store_floats<VEC>(out + l * out_stride + c, acc);
  }
}

// Largest block (a multiple of 32, at most 256) whose staging fits the shared-memory limit, or 0.
int mix_block_threads(int64_t levels_in, int vec) {
  const int64_t per_thread = levels_in * vec * static_cast<int64_t>(sizeof(float));
  const int64_t threads = std::min<int64_t>(256, kSharedBytes / std::max<int64_t>(per_thread, 1)) / 32 * 32;
  return static_cast<int>(threads);
}

template <typename scalar_t, int VEC>
void launch_mix(const at::Tensor& in, const at::Tensor& mix, at::Tensor& out, int threads) {
  const int64_t cols = in.size(1);
  const int64_t blocks = ceil_div(ceil_div(cols, VEC), threads);
  const size_t shared = static_cast<size_t>(in.size(0)) * VEC * threads * sizeof(float);
  mix_kernel<scalar_t, VEC><<<static_cast<unsigned>(blocks), threads, shared, cuda::stream()>>>(
      in.const_data_ptr<scalar_t>(), in.stride(0), mix.const_data_ptr<float>(), static_cast<int>(in.size(0)),
      static_cast<int>(out.size(0)), cols, out.mutable_data_ptr<scalar_t>(), out.stride(0));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void mix(const at::Tensor& in, const at::Tensor& mix_weight, at::Tensor& out) {
  if (out.numel() == 0) return;
  FASTMIM_DISPATCH_CUDA_FLOATS(in.scalar_type(), "dynamic_align_mix", [&] {
    constexpr int vec = 16 / sizeof(scalar_t);
    const int packed_threads = mix_block_threads(in.size(0), vec);
    const bool packed = packed_threads > 0 && in.size(1) % vec == 0 && cuda::packable(in, vec, {in.stride(0)}) &&
                        cuda::packable(out, vec, {out.stride(0)});
    if (packed) {
      launch_mix<scalar_t, vec>(in, mix_weight, out, packed_threads);
    } else {
      const int threads = mix_block_threads(in.size(0), 1);
      TORCH_CHECK_VALUE(threads > 0, "hidden has ", in.size(0), " levels; the CUDA kernel takes at most ",
                        kSharedBytes / (32 * sizeof(float)));
      launch_mix<scalar_t, 1>(in, mix_weight, out, threads);
    }
  });
}

constexpr int kThreads = 256;
constexpr int64_t kColsPerThread = 64;  // columns a thread sums before the block reduction

// acc[l, s] += Σ_c a[l, c] · b[s, c]: block (pair, slice) sums one pair over a slice of the columns, reduces
// over the block and adds the result atomically. Pairs vary fastest, so the blocks sharing a slice run
// together and read it from L2.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) dots_kernel(const scalar_t* __restrict__ a, int64_t a_stride,
                                                        const scalar_t* __restrict__ b, int64_t b_stride,
                                                        int levels_b, int64_t cols, int64_t cols_per_block,
                                                        float* __restrict__ acc) {
  __shared__ float scratch[kThreads / cuda::kWarp];
  const int l = blockIdx.x / levels_b, s = blockIdx.x % levels_b;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * cols_per_block;
  const int64_t c1 = c0 + cols_per_block < cols ? c0 + cols_per_block : cols;
  const scalar_t* ar = a + l * a_stride;
  const scalar_t* br = b + s * b_stride;
  float sum = 0.0f;
  for (int64_t c = c0 + static_cast<int64_t>(threadIdx.x) * VEC; c < c1; c += kThreads * VEC) {
    float x[VEC], y[VEC];
    load_floats<VEC>(ar + c, x);
    load_floats<VEC>(br + c, y);
#pragma unroll
    for (int i = 0; i < VEC; ++i) sum += x[i] * y[i];
  }
  sum = cuda::block_sum(sum, scratch);
  if (threadIdx.x == 0) atomicAdd(acc + l * levels_b + s, sum);
}

template <typename scalar_t, int VEC>
void launch_dots(const at::Tensor& a, const at::Tensor& b, at::Tensor& acc) {
  const int64_t cols = a.size(1), per_block = kThreads * kColsPerThread;  // a multiple of VEC
  const dim3 grid(static_cast<unsigned>(a.size(0) * b.size(0)), static_cast<unsigned>(ceil_div(cols, per_block)));
  dots_kernel<scalar_t, VEC><<<grid, kThreads, 0, cuda::stream()>>>(
      a.const_data_ptr<scalar_t>(), a.stride(0), b.const_data_ptr<scalar_t>(), b.stride(0),
      static_cast<int>(b.size(0)), cols, per_block, acc.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void dots(const at::Tensor& a, const at::Tensor& b, at::Tensor& acc) {
  if (acc.numel() == 0 || a.size(1) == 0) return;
  FASTMIM_DISPATCH_CUDA_FLOATS(a.scalar_type(), "dynamic_align_dots", [&] {
    constexpr int vec = 16 / sizeof(scalar_t);
    const bool packed = a.size(1) % vec == 0 && cuda::packable(a, vec, {a.stride(0)}) &&
                        cuda::packable(b, vec, {b.stride(0)});
    if (packed) {
      launch_dots<scalar_t, vec>(a, b, acc);
    } else {
      launch_dots<scalar_t, 1>(a, b, acc);
    }
  });
}

constexpr DynamicAlignPrimitives kCuda{mix, dots};

at::Tensor forward_cuda(const at::Tensor& hidden, const at::Tensor& mix_weight,
                        const std::optional<at::Tensor>& head_weight, const std::optional<at::Tensor>& head_bias) {
  FASTMIM_CHECK_CUDA_FLOATING(hidden);
  const c10::cuda::CUDAGuard guard(hidden.device());
  return dynamic_align_forward(kCuda, hidden, mix_weight, head_weight, head_bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& mix_weight,
    const std::optional<at::Tensor>& head_weight, std::array<bool, 4> output_mask) {
  FASTMIM_CHECK_CUDA_FLOATING(hidden);
  const c10::cuda::CUDAGuard guard(hidden.device());
  return dynamic_align_backward(kCuda, grad_out, hidden, mix_weight, head_weight, output_mask);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CUDA, m) {
  m.impl("dynamic_align", &fastmim::forward_cuda);
  m.impl("dynamic_align_backward", &fastmim::backward_cuda);
}
