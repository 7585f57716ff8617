// C++ entry points to fastmim's operators for code that links the library (see examples/cpp). Each call goes
// through the PyTorch dispatcher, so it reaches the CPU or CUDA kernel of its inputs' device. The autograd
// formulas are registered from Python (fastmim.ops); C++ callers use the explicit backward functions.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

namespace fastmim {

// [B, K, D]: conv2d(images, weight, bias, stride=p) + pos_embed, at the kept patches only.
at::Tensor masked_patch_embed(const at::Tensor& images, const at::Tensor& ids_keep, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias = std::nullopt,
                              const std::optional<at::Tensor>& pos_embed = std::nullopt);
// Gradients for (images, weight, bias, pos_embed) where output_mask says so; empty tensors elsewhere.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_patch_embed_backward(
    const at::Tensor& grad_out, const at::Tensor& images, const at::Tensor& ids_keep, const at::Tensor& weight,
    std::array<bool, 4> output_mask);

// (per-level loss [L], d(row loss)/d(pred) or an empty tensor when !with_grad); prediction row j of sample b is
// compared with target row rows[b, j].
std::tuple<at::Tensor, at::Tensor> align_loss(const at::Tensor& pred, const at::Tensor& target,
                                              const at::Tensor& rows, const std::string& loss = "smooth_l1",
                                              const std::string& target_norm = "layernorm",
                                              const std::string& pred_norm = "none", double beta = 1.0,
                                              double eps = 1e-5, bool with_grad = true);
at::Tensor align_loss_backward(const at::Tensor& grad_loss, const at::Tensor& grad_rows, const std::string& loss);

// [L, B, T, Dt] (or the mixed levels [L, B, T, D] without head_weight).
at::Tensor dynamic_align(const at::Tensor& hidden, const at::Tensor& mix,
                         const std::optional<at::Tensor>& head_weight = std::nullopt,
                         const std::optional<at::Tensor>& head_bias = std::nullopt);
// Gradients for (hidden, mix, head_weight, head_bias) where output_mask says so; empty tensors elsewhere.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dynamic_align_backward(
    const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& mix,
    const std::optional<at::Tensor>& head_weight, std::array<bool, 4> output_mask);

// MAE's loss at the masked patches: (loss, d(loss)/d(pred) or an empty tensor when !with_grad).
std::tuple<at::Tensor, at::Tensor> masked_pixel_loss(const at::Tensor& pred, const at::Tensor& images,
                                                     const at::Tensor& ids, int64_t patch_size, bool norm_pix = true,
                                                     double eps = 1e-6, bool with_grad = true);

// BEiT v2's block masks on seed's device (seed: one int64, the Philox key): (kept [batch, N - masked], masked
// [batch, masked]), ascending patch indices of a grid_h x grid_w grid.
std::tuple<at::Tensor, at::Tensor> block_mask(const at::Tensor& seed, int64_t batch, int64_t grid_h, int64_t grid_w,
                                              int64_t masked, int64_t min_patches = 16, double min_aspect = 0.3,
                                              int64_t attempts = 10);

}  // namespace fastmim
