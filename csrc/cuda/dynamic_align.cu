// dynamic_align on CUDA: the level-mixing kernel and the mix-weight gradient reduction of the shared driver.
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/dispatch.h"
#include "../common/dynamic_align_driver.h"
#include "utils.h"

namespace fastmim {
namespace {

using cuda::ceil_div;
using cuda::load_floats;
using cuda::store_floats;

constexpr int kThreads = 256;
constexpr int kTile = 4;  // output levels accumulated together, as the CPU kernel's register tiles

// out[l, c..c+VEC) = Σ_s mix[l, s] · in[s, c..c+VEC): a thread's columns of kTile output levels are summed
// in registers while the S input levels stream past, then the next kTile levels re-read the inputs (from L1:
// the block just read them). No shared memory, so occupancy is bound by registers only.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) mix_kernel(const scalar_t* __restrict__ in, int64_t in_stride,
                                                       const float* __restrict__ mix, int levels_in,
                                                       int levels_out, int64_t cols, scalar_t* __restrict__ out,
                                                       int64_t out_stride) {
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC;
  if (c >= cols) return;
  for (int l0 = 0; l0 < levels_out; l0 += kTile) {
    float acc[kTile][VEC] = {};
    for (int s = 0; s < levels_in; ++s) {
      float v[VEC];
      load_floats<VEC>(in + s * in_stride + c, v);
#pragma unroll
      for (int q = 0; q < kTile; ++q) {
        const float w = l0 + q < levels_out ? __ldg(mix + (l0 + q) * levels_in + s) : 0.0f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[q][i] += w * v[i];
      }
    }
#pragma unroll
    for (int q = 0; q < kTile; ++q) {
      if (l0 + q < levels_out) store_floats<VEC>(out + (l0 + q) * out_stride + c, acc[q]);
    }
  }
}

void mix(const at::Tensor& in, const at::Tensor& mix_weight, at::Tensor& out) {
  if (out.numel() == 0) return;
  const int64_t cols = in.size(1);
  FASTMIM_DISPATCH_CUDA_FLOATS(in.scalar_type(), "dynamic_align_mix", [&] {
    constexpr int vec = 16 / sizeof(scalar_t);
    const bool packed = cuda::packable(in, vec, {in.stride(0), cols}) && cuda::packable(out, vec, {out.stride(0)});
    const int width = packed ? vec : 1;
    const dim3 grid(static_cast<unsigned>(ceil_div(ceil_div(cols, width), kThreads)));
    auto kernel = packed ? mix_kernel<scalar_t, vec> : mix_kernel<scalar_t, 1>;
    FASTMIM_LAUNCH(kernel, grid, kThreads, 0, cuda::stream())(
        in.const_data_ptr<scalar_t>(), in.stride(0), mix_weight.const_data_ptr<float>(), static_cast<int>(in.size(0)),
        static_cast<int>(out.size(0)), cols, out.mutable_data_ptr<scalar_t>(), out.stride(0));
    FASTMIM_LAUNCH_CHECK();
  });
}

constexpr int64_t kColsPerThread = 64;  // columns a thread sums (at least) before the block reduction
constexpr int64_t kMaxSlices = 4096;     // column slices per pair: bounds the partial sums

// partial[pair, slice] = Σ_{c in slice} a[l, c] · b[s, c] for pair = l·S + s: block (pair, slice) sums over its
// slice and reduces over the block. Pairs vary fastest, so the blocks sharing a slice run together and read
// it from L2. The partial sums are added in order afterwards, not by atomics: the gradient is deterministic.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) dots_kernel(const scalar_t* __restrict__ a, int64_t a_stride,
                                                        const scalar_t* __restrict__ b, int64_t b_stride,
                                                        int levels_b, int64_t cols, int64_t cols_per_block,
                                                        float* __restrict__ partial) {
  FASTMIM_SHARED(float, scratch, kThreads / cuda::kWarp);
  const int pair = blockIdx.x, l = pair / levels_b, s = pair % levels_b;
  const scalar_t* ar = a + l * a_stride;
  const scalar_t* br = b + s * b_stride;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * cols_per_block;
  const int64_t c1 = c0 + cols_per_block < cols ? c0 + cols_per_block : cols;
  float sum = 0.0f;
  for (int64_t c = c0 + static_cast<int64_t>(threadIdx.x) * VEC; c < c1; c += kThreads * VEC) {
    float x[VEC], y[VEC];
    load_floats<VEC>(ar + c, x);
    load_floats<VEC>(br + c, y);
#pragma unroll
    for (int i = 0; i < VEC; ++i) sum += x[i] * y[i];
  }
  sum = cuda::block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[static_cast<int64_t>(pair) * gridDim.y + blockIdx.y] = sum;
}

template <typename scalar_t, int VEC>
void launch_dots(const at::Tensor& a, const at::Tensor& b, at::Tensor& acc) {
  const int64_t cols = a.size(1), pairs = a.size(0) * b.size(0);
  // Slices grow with the columns so that their count stays within kMaxSlices and the grid's row limit; they
  // start at multiples of the block's vector step.
  const int64_t step = kThreads * VEC, most = std::min<int64_t>(kMaxSlices, cuda::max_grid_y());
  const int64_t per_block = ceil_div(std::max(kThreads * kColsPerThread, ceil_div(cols, most)), step) * step;
  const int64_t slices = ceil_div(cols, per_block);
  at::Tensor partial = at::empty({pairs, slices}, acc.options());
  const dim3 grid(static_cast<unsigned>(pairs), static_cast<unsigned>(slices));
  FASTMIM_LAUNCH((dots_kernel<scalar_t, VEC>), grid, kThreads, 0, cuda::stream())(
      a.const_data_ptr<scalar_t>(), a.stride(0), b.const_data_ptr<scalar_t>(), b.stride(0),
      static_cast<int>(b.size(0)), cols, per_block, partial.mutable_data_ptr<float>());
  FASTMIM_LAUNCH_CHECK();
  acc.add_(partial.sum(1).view(acc.sizes()));
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
  return dynamic_align_forward(kCuda, hidden, mix_weight, head_weight, head_bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& mix_weight,
    const std::optional<at::Tensor>& head_weight, std::array<bool, 4> output_mask) {
  FASTMIM_CHECK_CUDA_FLOATING(hidden);
  return dynamic_align_backward(kCuda, grad_out, hidden, mix_weight, head_weight, output_mask);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(FASTMIM_CUDA_LIBRARY, FASTMIM_CUDA_KEY, m) {
  m.impl("dynamic_align", &fastmim::forward_cuda);
  m.impl("dynamic_align_backward", &fastmim::backward_cuda);
}
