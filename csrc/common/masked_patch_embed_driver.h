// masked_patch_embed composed from device primitives (CPU or CUDA) and ATen GEMMs, shared by both backends.
//
// Forward: one gather pass writes the kept patches as the row-major [B*K, C*p*p] matrix the GEMM reads and,
// in the same pass, initializes the output rows with bias + pos_embed[ids]; one addmm adds patches @ Wᵀ.
// Backward: dW = gradᵀ @ patches (the gather is recomputed, not kept), bias and pos_embed gradients are one
// row reduction, the image gradient is (grad @ W) scattered back into the patches' pixels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <array>
#include <optional>
#include <tuple>

#include "validate.h"

namespace fastmim {

struct PatchEmbedPrimitives {
  // patches[r] = kept patch r (r = b*K + k); when out is defined, out[r] = bias + pos_embed[ids[r]] (either
  // may be undefined).
  void (*gather)(const at::Tensor& images, const at::Tensor& ids_keep, const PatchEmbedShape& shape,
                 at::Tensor& patches, const at::Tensor& bias, const at::Tensor& pos_embed, at::Tensor& out);
  // grad_bias = Σ_r grad[r]; grad_pos[n] = Σ_{r: ids[r] = n} grad[r]; undefined outputs are skipped.
  void (*reduce_rows)(const at::Tensor& grad, const at::Tensor& ids_keep, const PatchEmbedShape& shape,
                      at::Tensor& grad_bias, at::Tensor& grad_pos);
  // grad_images (zero-initialized, contiguous) += grad_patches scattered to the kept patches' pixels.
  void (*scatter)(const at::Tensor& grad_patches, const at::Tensor& ids_keep, const PatchEmbedShape& shape,
                  at::Tensor& grad_images);
};

inline at::Tensor masked_patch_embed_forward(const PatchEmbedPrimitives& k, const at::Tensor& images,
                                             const at::Tensor& ids_keep, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& bias,
                                             const std::optional<at::Tensor>& pos_embed) {
  const PatchEmbedShape s = check_masked_patch_embed(images, ids_keep, weight, bias, pos_embed);
  const int64_t rows = s.batch * s.kept;
  const at::Tensor ids = ids_keep.contiguous();
  const at::Tensor w2d = weight.reshape({s.dim, s.patch_numel()});
  at::Tensor patches = at::empty({rows, s.patch_numel()}, images.options());
  const bool init = bias.has_value() || pos_embed.has_value();
  at::Tensor out = init ? at::empty({rows, s.dim}, images.options()) : at::Tensor();
  if (rows > 0) {
    k.gather(images, ids, s, patches, bias.value_or(at::Tensor()), pos_embed.value_or(at::Tensor()), out);
  }
  if (init) {
    out.addmm_(patches, w2d.t());
  } else {
    out = at::mm(patches, w2d.t());
  }
  return out.view({s.batch, s.kept, s.dim});
}

// output_mask: gradients wanted for (images, weight, bias, pos_embed); the others come back empty.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_patch_embed_backward(
    const PatchEmbedPrimitives& k, const at::Tensor& grad_out, const at::Tensor& images,
    const at::Tensor& ids_keep, const at::Tensor& weight, std::array<bool, 4> output_mask) {
  const PatchEmbedShape s = check_masked_patch_embed(images, ids_keep, weight, std::nullopt, std::nullopt);
  FASTMIM_CHECK_DIM(grad_out, 3);
  TORCH_CHECK_VALUE(grad_out.size(0) == s.batch && grad_out.size(1) == s.kept && grad_out.size(2) == s.dim,
                    "grad_out must have shape [", s.batch, ", ", s.kept, ", ", s.dim, "], got ",
                    grad_out.sizes());
  FASTMIM_CHECK_SAME_DTYPE(grad_out, images);
  FASTMIM_CHECK_SAME_DEVICE(grad_out, images);
  const int64_t rows = s.batch * s.kept;
  const at::Tensor ids = ids_keep.contiguous();
  const at::Tensor grad = grad_out.reshape({rows, s.dim}).contiguous();
  const at::Tensor w2d = weight.reshape({s.dim, s.patch_numel()});
  const at::Tensor none = at::empty({0}, images.options());
  at::Tensor grad_images = none, grad_weight = none, grad_bias = none, grad_pos = none;
  if (output_mask[0]) {
    grad_images = at::zeros(images.sizes(), images.options());
    if (rows > 0) k.scatter(at::mm(grad, w2d), ids, s, grad_images);
  }
  if (output_mask[1]) {
    at::Tensor patches = at::empty({rows, s.patch_numel()}, images.options());
    at::Tensor no_out;
    if (rows > 0) k.gather(images, ids, s, patches, at::Tensor(), at::Tensor(), no_out);
    grad_weight = at::mm(grad.t(), patches).view(weight.sizes());
  }
  if (output_mask[2] || output_mask[3]) {
    at::Tensor bias_out = output_mask[2] ? at::empty({s.dim}, images.options()) : at::Tensor();
    at::Tensor pos_out = output_mask[3] ? at::empty({s.num_patches(), s.dim}, images.options()) : at::Tensor();
    k.reduce_rows(grad, ids, s, bias_out, pos_out);
    if (output_mask[2]) grad_bias = bias_out;
    if (output_mask[3]) grad_pos = pos_out;
  }
  return {grad_images, grad_weight, grad_bias, grad_pos};
}

}  // namespace fastmim
