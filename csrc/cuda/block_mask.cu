// block_mask on CUDA: one thread per sample, drawing it with block_mask_math.h (the mask as 64-bit patch rows in
// local memory). The seed is read on the device, so a draw from a generator never waits for the host.
#include <torch/library.h>

#include "../common/block_mask_driver.h"
#include "utils.h"

namespace fastmim {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) block_mask_kernel(const int64_t* __restrict__ seed, BlockMaskParams p,
                                                               int64_t batch, int64_t kept,
                                                               int64_t* __restrict__ keep,
                                                               int64_t* __restrict__ masked) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= batch) return;  // nothing below synchronizes the block or the warp
  block_mask_sample(p, static_cast<uint64_t>(*seed), b, keep + b * kept, masked + b * p.masked);
}

void draw(const at::Tensor& seed, const BlockMaskParams& p, int64_t batch, at::Tensor& keep, at::Tensor& masked) {
  const dim3 grid(static_cast<unsigned>(cuda::ceil_div(batch, kThreads)));
  FASTMIM_LAUNCH(block_mask_kernel, grid, kThreads, 0, cuda::stream())(
      seed.const_data_ptr<int64_t>(), p, batch, keep.size(1), keep.mutable_data_ptr<int64_t>(),
      masked.mutable_data_ptr<int64_t>());
  FASTMIM_LAUNCH_CHECK();
}

constexpr BlockMaskPrimitives kCuda{draw};

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& seed, int64_t batch, int64_t grid_h, int64_t grid_w,
                                                int64_t masked, int64_t min_patches, double min_aspect,
                                                int64_t attempts) {
  TORCH_CHECK_VALUE(batch < (int64_t{1} << 31) * kThreads, "batch is too large for the CUDA kernel: ", batch);
  return block_mask_forward(kCuda, seed, batch, grid_h, grid_w, masked, min_patches, min_aspect, attempts);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(FASTMIM_CUDA_LIBRARY, FASTMIM_CUDA_KEY, m) { m.impl("block_mask", &fastmim::forward_cuda); }
