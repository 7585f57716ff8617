// block_mask composed from one device primitive, shared by the CPU and CUDA backends: the argument checks,
// the outputs, and the per-sample draw (block_mask_math.h) run by each backend over the batch.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <cmath>
#include <tuple>

#include "block_mask_math.h"
#include "checks.h"

namespace fastmim {

struct BlockMaskPrimitives {
  // keep [B, N - M] and masked [B, M] (int64, contiguous) receive every sample's ascending patch indices;
  // seed holds the Philox key (one int64 on the outputs' device).
  void (*draw)(const at::Tensor& seed, const BlockMaskParams& p, int64_t batch, at::Tensor& keep,
               at::Tensor& masked);
};

inline BlockMaskParams check_block_mask(const at::Tensor& seed, int64_t batch, int64_t grid_h, int64_t grid_w,
                                        int64_t masked, int64_t min_patches, double min_aspect, int64_t attempts) {
  FASTMIM_CHECK_INDEX_TENSOR(seed);
  TORCH_CHECK_VALUE(seed.numel() == 1, "seed must hold one value, got shape ", seed.sizes());
  TORCH_CHECK_VALUE(batch >= 0, "batch must be non-negative, got ", batch);
  TORCH_CHECK_VALUE(grid_h >= 1 && grid_h <= kMaxBlockMaskSide && grid_w >= 1 && grid_w <= kMaxBlockMaskSide,
                    "the patch grid must be 1 to ", kMaxBlockMaskSide, " patches a side, got ", grid_h, "x", grid_w);
  TORCH_CHECK_VALUE(masked >= 1 && masked < grid_h * grid_w, "masked must be in [1, ", grid_h * grid_w - 1,
                    "] for a ", grid_h, "x", grid_w, " grid, got ", masked);
  TORCH_CHECK_VALUE(min_patches >= 1, "min_patches must be positive, got ", min_patches);
  TORCH_CHECK_VALUE(min_aspect > 0 && min_aspect <= 1, "min_aspect must be in (0, 1], got ", min_aspect);
  TORCH_CHECK_VALUE(attempts >= 1, "attempts must be positive, got ", attempts);
  const float lo = static_cast<float>(std::log(min_aspect));
  return BlockMaskParams{static_cast<int>(grid_h), static_cast<int>(grid_w), static_cast<int>(masked),
                         static_cast<int>(std::min<int64_t>(min_patches, 1 << 20)), static_cast<int>(attempts),
                         lo, -2 * lo};
}

inline std::tuple<at::Tensor, at::Tensor> block_mask_forward(const BlockMaskPrimitives& k, const at::Tensor& seed,
                                                             int64_t batch, int64_t grid_h, int64_t grid_w,
                                                             int64_t masked, int64_t min_patches, double min_aspect,
                                                             int64_t attempts) {
  const BlockMaskParams p = check_block_mask(seed, batch, grid_h, grid_w, masked, min_patches, min_aspect, attempts);
  const c10::DeviceGuard guard(seed.device());
  at::Tensor keep = at::empty({batch, grid_h * grid_w - masked}, seed.options());
  at::Tensor masked_ids = at::empty({batch, masked}, seed.options());
  if (batch > 0) k.draw(seed, p, batch, keep, masked_ids);
  return {keep, masked_ids};
}

}  // namespace fastmim
