"""masked_pixel_loss: MAE's reconstruction loss at the masked patches, read straight from the image.

pred [B, M, p²·C] holds the decoder's outputs at the M patches `ids` [B, M] (row-major patch indices) in MAE's
(p, q, c) order. The target of each is its patch of the image, normalized when `norm_pix` as MAE does:
(x - mean) / √(var + eps), var unbiased. The loss is the mean squared error over the M patches and their
values — MAE's `forward_loss` without the patchified copy of the batch. The gradient is computed in forward
(and kept in float32 until backward, so that it is rounded to pred's dtype once, as autograd would).
"""
from __future__ import annotations

import torch

from ._checks import check_indices, check_same_device, check_tensor, guarded_indices


def validate(pred, images, ids, patch_size, eps) -> int:
    """Check every argument; return the number of patches N."""
    check_tensor("pred", pred, ndim=3)
    check_tensor("images", images, ndim=4)
    check_tensor("ids", ids, ndim=2, floating=False)
    p = int(patch_size)
    if p <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    batch, channels, height, width = images.shape
    if height % p or width % p:
        raise ValueError(f"images size {height}x{width} is not divisible by the patch size {p}")
    if ids.shape[0] != batch:
        raise ValueError(f"ids must be [{batch}, M] to match images, got {list(ids.shape)}")
    numel = p * p * channels
    if tuple(pred.shape) != (batch, ids.shape[1], numel):
        raise ValueError(f"pred must be [{batch}, {ids.shape[1]}, {numel}] (p²·C = {numel} values per patch), "
                         f"got {list(pred.shape)}")
    check_same_device("pred", pred, images=images, ids=ids)
    check_indices("ids", ids, (height // p) * (width // p))
    return (height // p) * (width // p)


def patch_targets(images: torch.Tensor, ids: torch.Tensor, p: int) -> torch.Tensor:
    """MAE's patchify ((p, q, c) order), then the patches at ids: [B, M, p²·C]."""
    b, c, h, w = images.shape
    patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    return patches.gather(1, ids[..., None].expand(-1, -1, patches.shape[-1]))


def masked_pixel_loss_reference(pred, images, ids, patch_size, norm_pix=True, eps=1e-6):
    """Plain PyTorch in float32 (float64 for float64 predictions): patchify, gather, normalize, mean."""
    n = validate(pred, images, ids, patch_size, eps)
    ids = guarded_indices("masked_pixel_loss", "ids", ids, n)
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    target = patch_targets(images.detach(), ids, int(patch_size)).to(acc)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return (pred.to(acc) - target).square().mean()


# --- the fused op: torch.ops.<library>.masked_pixel_loss (csrc/{cpu,cuda}/masked_pixel_loss.*) -------------

def _fake(pred, images, ids, patch_size, norm_pix=True, eps=1e-6, with_grad=True):
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return pred.new_empty((), dtype=acc), pred.new_empty(pred.shape if with_grad else (0,), dtype=acc)


def _setup_context(ctx, inputs, output):
    ctx.pred_dtype = inputs[0].dtype
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1])  # d(loss)/d(pred): nothing of the image is kept


def _backward(ctx, grad_loss, _):
    (grad_pred,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 7
    if grad_pred.dim() != 3:
        raise RuntimeError("masked_pixel_loss ran with with_grad=False, so it kept no gradient for pred")
    return ((grad_pred * grad_loss).to(ctx.pred_dtype),) + (None,) * 6


def register_fused(library: str = "fastmim"):
    """Register the fake kernel and autograd of `library`::masked_pixel_loss and return the function that
    calls it."""
    op = getattr(torch.ops, library)

    def masked_pixel_loss_fused(pred, images, ids, patch_size, norm_pix=True, eps=1e-6):
        """The compiled kernel: one pass per patch reads its pixels, normalizes them and writes the gradient."""
        validate(pred, images, ids, patch_size, eps)
        with_grad = pred.requires_grad and torch.is_grad_enabled()
        loss, _ = op.masked_pixel_loss(pred, images, ids, int(patch_size), bool(norm_pix), float(eps), with_grad)
        return loss

    torch.library.register_fake(f"{library}::masked_pixel_loss", _fake)
    torch.library.register_autograd(f"{library}::masked_pixel_loss", _backward, setup_context=_setup_context)
    return masked_pixel_loss_fused
