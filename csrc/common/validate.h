// Shape, dtype and device checks of each op, shared by the CPU and CUDA implementations (host code only).
// The CUDA side adds its dtype restriction (no float64) on top.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "checks.h"
#include "index_math.h"

namespace fastmim {

struct PatchEmbedShape {
  int64_t batch, channels, kept, dim, patch, grid_h, grid_w;
  bool channels_inner;  // patches in (i, j, c) order, for channels-last images (index_math.h)
  int64_t num_patches() const { return grid_h * grid_w; }
  int64_t patch_numel() const { return channels * patch * patch; }
};

// Channels-last storage (the channels of a pixel adjacent): patch rows are gathered in (i, j, c) order.
inline bool is_channels_last(const at::Tensor& images) {
  return images.size(1) > 1 && images.stride(1) == 1 && images.stride(3) == images.size(1);
}

inline PatchGeometry patch_geometry(const at::Tensor& images, const PatchEmbedShape& s) {
  // (i, j, c) lines are uniform-stride runs only where a pixel's channels sit within its column step.
  TORCH_INTERNAL_ASSERT(!s.channels_inner || images.stride(3) == s.channels * images.stride(1),
                        "patch rows in (i, j, c) order need channels-last strides, got ", images.strides());
  return {s.patch, s.grid_w, s.channels, images.stride(0), images.stride(1), images.stride(2), images.stride(3),
          s.channels_inner};
}

inline PatchEmbedShape check_masked_patch_embed(const at::Tensor& images, const at::Tensor& ids_keep,
                                                const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias,
                                                const std::optional<at::Tensor>& pos_embed) {
  FASTMIM_CHECK_DIM(images, 4);
  FASTMIM_CHECK_FLOATING(images);
  FASTMIM_CHECK_DIM(weight, 4);
  FASTMIM_CHECK_SAME_DTYPE(weight, images);
  FASTMIM_CHECK_DIM(ids_keep, 2);
  FASTMIM_CHECK_INDEX_TENSOR(ids_keep);
  PatchEmbedShape s{};
  s.batch = images.size(0);
  s.channels = images.size(1);
  s.kept = ids_keep.size(1);
  s.dim = weight.size(0);
  s.patch = weight.size(2);
  TORCH_CHECK_VALUE(weight.size(3) == s.patch && s.patch > 0,
                    "weight must be [D, C, p, p] with square patches, got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == s.channels, "images has ", s.channels, " channels but weight expects ",
                    weight.size(1));
  TORCH_CHECK_VALUE(images.size(2) % s.patch == 0 && images.size(3) % s.patch == 0, "images size ",
                    images.size(2), "x", images.size(3), " is not divisible by the patch size ", s.patch);
  s.grid_h = images.size(2) / s.patch;
  s.grid_w = images.size(3) / s.patch;
  s.channels_inner = is_channels_last(images);
  FASTMIM_CHECK_SIZE(ids_keep, 0, s.batch);
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == s.dim, "bias must have shape [", s.dim, "], got ",
                      b.sizes());
    TORCH_CHECK_TYPE(b.scalar_type() == images.scalar_type(), "bias must have the dtype of images (",
                     images.scalar_type(), "), got ", b.scalar_type());
  }
  if (pos_embed.has_value()) {
    const at::Tensor& p = *pos_embed;
    TORCH_CHECK_VALUE(p.dim() == 2 && p.size(0) == s.num_patches() && p.size(1) == s.dim,
                      "pos_embed must have shape [", s.num_patches(), ", ", s.dim, "], got ", p.sizes());
    TORCH_CHECK_TYPE(p.scalar_type() == images.scalar_type(), "pos_embed must have the dtype of images (",
                     images.scalar_type(), "), got ", p.scalar_type());
  }
  FASTMIM_CHECK_SAME_DEVICE(ids_keep, images);
  FASTMIM_CHECK_SAME_DEVICE(weight, images);
  check_optional_device(bias, images, "bias", "images");
  check_optional_device(pos_embed, images, "pos_embed", "images");
  return s;
}

struct AlignLossShape {
  int64_t levels, batch, rows, dim, target_rows;  // rows = R per sample; target_rows = T
};

inline AlignLossShape check_align_loss(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& rows) {
  FASTMIM_CHECK_DIM(pred, 4);
  FASTMIM_CHECK_FLOATING(pred);
  FASTMIM_CHECK_DIM(target, 4);
  FASTMIM_CHECK_FLOATING(target);
  FASTMIM_CHECK_DIM(rows, 2);
  FASTMIM_CHECK_INDEX_TENSOR(rows);
  AlignLossShape s{pred.size(0), pred.size(1), pred.size(2), pred.size(3), target.size(2)};
  TORCH_CHECK_VALUE(target.size(0) == s.levels && target.size(1) == s.batch && target.size(3) == s.dim &&
                        s.target_rows >= 1,
                    "target must be [", s.levels, ", ", s.batch, ", T, ", s.dim, "] to match pred ",
                    pred.sizes(), ", got ", target.sizes());
  TORCH_CHECK_VALUE(rows.size(0) == s.batch && rows.size(1) == s.rows, "rows must be [", s.batch, ", ", s.rows,
                    "] to match pred, got ", rows.sizes());
  FASTMIM_CHECK_SAME_DEVICE(target, pred);
  FASTMIM_CHECK_SAME_DEVICE(rows, pred);
  return s;
}

struct PixelLossShape {
  int64_t batch, rows, channels, patch, grid_h, grid_w;  // rows = M predicted patches per sample
  int64_t numel() const { return channels * patch * patch; }
  int64_t num_patches() const { return grid_h * grid_w; }
};

inline PixelLossShape check_masked_pixel_loss(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& ids,
                                              int64_t patch_size, double eps) {
  FASTMIM_CHECK_DIM(pred, 3);
  FASTMIM_CHECK_FLOATING(pred);
  FASTMIM_CHECK_DIM(images, 4);
  FASTMIM_CHECK_FLOATING(images);
  FASTMIM_CHECK_DIM(ids, 2);
  FASTMIM_CHECK_INDEX_TENSOR(ids);
  TORCH_CHECK_VALUE(patch_size > 0, "patch_size must be positive, got ", patch_size);
  TORCH_CHECK_VALUE(eps > 0, "eps must be positive, got ", eps);
  TORCH_CHECK_VALUE(images.size(2) % patch_size == 0 && images.size(3) % patch_size == 0, "images size ",
                    images.size(2), "x", images.size(3), " is not divisible by the patch size ", patch_size);
  PixelLossShape s{images.size(0), ids.size(1), images.size(1), patch_size, images.size(2) / patch_size,
                   images.size(3) / patch_size};
  TORCH_CHECK_VALUE(ids.size(0) == s.batch, "ids must be [", s.batch, ", M] to match images, got ", ids.sizes());
  TORCH_CHECK_VALUE(pred.size(0) == s.batch && pred.size(1) == s.rows && pred.size(2) == s.numel(),
                    "pred must be [", s.batch, ", ", s.rows, ", ", s.numel(), "] (p²·C = ", s.numel(),
                    " values per patch), got ", pred.sizes());
  FASTMIM_CHECK_SAME_DEVICE(images, pred);
  FASTMIM_CHECK_SAME_DEVICE(ids, pred);
  return s;
}

struct DynamicAlignShape {
  int64_t levels_in, levels_out, tokens, dim, out_dim;  // tokens = B * T; out_dim = Dt (or D)
};

inline DynamicAlignShape check_dynamic_align(const at::Tensor& hidden, const at::Tensor& mix,
                                             const std::optional<at::Tensor>& head_weight,
                                             const std::optional<at::Tensor>& head_bias) {
  FASTMIM_CHECK_DIM(hidden, 4);
  FASTMIM_CHECK_FLOATING(hidden);
  FASTMIM_CHECK_DIM(mix, 2);
  FASTMIM_CHECK_FLOATING(mix);
  DynamicAlignShape s{hidden.size(0), mix.size(0), hidden.size(1) * hidden.size(2), hidden.size(3),
                      hidden.size(3)};
  TORCH_CHECK_VALUE(mix.size(1) == s.levels_in, "mix must be [L, ", s.levels_in, "] for hidden with ",
                    s.levels_in, " levels, got ", mix.sizes());
  TORCH_CHECK_VALUE(head_weight.has_value() || !head_bias.has_value(),
                    "head_bias was given without head_weight");
  if (head_weight.has_value()) {
    const at::Tensor& w = *head_weight;
    TORCH_CHECK_VALUE(w.dim() == 3 && w.size(0) == s.levels_out && w.size(2) == s.dim,
                      "head_weight must have shape [", s.levels_out, ", *, ", s.dim, "], got ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == hidden.scalar_type(), "head_weight must have the dtype of hidden (",
                     hidden.scalar_type(), "), got ", w.scalar_type());
    s.out_dim = w.size(1);
  }
  if (head_bias.has_value()) {
    const at::Tensor& b = *head_bias;
    TORCH_CHECK_VALUE(b.dim() == 2 && b.size(0) == s.levels_out && b.size(1) == s.out_dim,
                      "head_bias must have shape [", s.levels_out, ", ", s.out_dim, "], got ", b.sizes());
    TORCH_CHECK_TYPE(b.scalar_type() == hidden.scalar_type(), "head_bias must have the dtype of hidden (",
                     hidden.scalar_type(), "), got ", b.scalar_type());
  }
  FASTMIM_CHECK_SAME_DEVICE(mix, hidden);
  check_optional_device(head_weight, hidden, "head_weight", "hidden");
  check_optional_device(head_bias, hidden, "head_bias", "hidden");
  return s;
}

}  // namespace fastmim
