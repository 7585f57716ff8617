// Every fastmim operator schema, written once. ops.cpp declares them in the `fastmim` library; the test-only
// SIMT-emulation library declares the same schemas in `fastmim_emulated` (csrc/emulation/ops.cpp), so that the
// CUDA kernel bodies compiled for the CPU run behind identical operators.
#pragma once

#include <torch/library.h>

namespace fastmim {

inline void define_schemas(torch::Library& m) {
  m.def(
      "masked_patch_embed(Tensor images, Tensor ids_keep, Tensor weight, Tensor? bias=None, "
      "Tensor? pos_embed=None) -> Tensor");
  // Gradients for (images, weight, bias, pos_embed) where output_mask says so, empty tensors elsewhere.
  m.def(
      "masked_patch_embed_backward(Tensor grad_out, Tensor images, Tensor ids_keep, Tensor weight, "
      "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");

  // Returns the per-level loss and, when with_grad, d(row loss)/d(pred) (pred's shape and dtype) for the
  // backward to rescale; an empty tensor otherwise.
  m.def(
      "align_loss(Tensor pred, Tensor target, Tensor rows, str loss=\"smooth_l1\", "
      "str target_norm=\"layernorm\", str pred_norm=\"none\", float beta=1.0, float eps=1e-05, "
      "bool with_grad=True) -> (Tensor, Tensor)");
  m.def("align_loss_backward(Tensor grad_loss, Tensor grad_rows, str loss) -> Tensor");

  // MAE's loss: the mean squared error between pred [B, M, p²·C] and the image's patches at ids [B, M], read
  // from the image in (p, q, c) order and normalized per patch when norm_pix. Returns the loss and, when with_grad,
  // d(loss)/d(pred) (pred's shape, float32; float64 for float64 pred).
  m.def(
      "masked_pixel_loss(Tensor pred, Tensor images, Tensor ids, int patch_size, bool norm_pix=True, "
      "float eps=1e-06, bool with_grad=True) -> (Tensor, Tensor)");

  // BEiT v2's block-wise masks, drawn on seed's device with Philox keyed by seed (one int64): the ascending patch
  // indices kept [batch, N - masked] and masked [batch, masked] of a grid_h x grid_w grid (at most 64 a side).
  m.def(
      "block_mask(Tensor seed, int batch, int grid_h, int grid_w, int masked, int min_patches=16, "
      "float min_aspect=0.3, int attempts=10) -> (Tensor, Tensor)");

  m.def("dynamic_align(Tensor hidden, Tensor mix, Tensor? head_weight=None, Tensor? head_bias=None) -> Tensor");
  // Gradients for (hidden, mix, head_weight, head_bias) where output_mask says so, empty tensors elsewhere.
  m.def(
      "dynamic_align_backward(Tensor grad_out, Tensor hidden, Tensor mix, Tensor? head_weight, "
      "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");

  // Raises IndexError naming the op and argument when a CUDA kernel found an index out of range on the device
  // of `like` since the last call (a synchronization); clears the record.
  m.def("check_device_errors(Tensor like) -> ()");
  // The SASS version of the kernels for the GPU of `like`, -(PTX version) when they run JIT-compiled from PTX,
  // 0 when the library holds no code for it (CUDA builds only).
  m.def("cuda_kernel_version(Tensor like) -> int");
}

}  // namespace fastmim
