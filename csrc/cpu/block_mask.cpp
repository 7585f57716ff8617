// block_mask on the CPU: the samples split over the threads, each drawn by block_mask_math.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/block_mask_driver.h"

namespace fastmim {
namespace {

void draw(const at::Tensor& seed, const BlockMaskParams& p, int64_t batch, at::Tensor& keep, at::Tensor& masked) {
  const uint64_t key = static_cast<uint64_t>(seed.item<int64_t>());
  const int64_t kept = keep.size(1), m = masked.size(1);
  int64_t* keep_out = keep.mutable_data_ptr<int64_t>();
  int64_t* masked_out = masked.mutable_data_ptr<int64_t>();
  at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) block_mask_sample(p, key, b, keep_out + b * kept, masked_out + b * m);
  });
}

constexpr BlockMaskPrimitives kCpu{draw};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& seed, int64_t batch, int64_t grid_h, int64_t grid_w,
                                               int64_t masked, int64_t min_patches, double min_aspect,
                                               int64_t attempts) {
  return block_mask_forward(kCpu, seed, batch, grid_h, grid_w, masked, min_patches, min_aspect, attempts);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CPU, m) { m.impl("block_mask", &fastmim::forward_cpu); }
