"""fastmim's drop-in ops (DESIGN §4). Each runs the compiled kernel when available, else its reference."""
from ._backend import check_device_errors, fused_ops, kernels_mode, set_kernels
from .align_loss import cls_and_kept_rows
from ._backend import implementation as _implementation

fused_ops()  # loads fastmim._C when built and registers the ops' fake kernels, autograd and autocast


def masked_patch_embed(images, ids_keep, weight, bias=None, pos_embed=None):
    """Patch-embed only the kept patches: [B, C, H, W] images, [B, K] ids → [B, K, D]."""
    return _implementation("masked_patch_embed")(images, ids_keep, weight, bias, pos_embed)


def dynamic_align(hidden, mix, head_weight=None, head_bias=None):
    """Mix [S, B, T, D] student levels with mix [L, S], then optional per-level heads → [L, B, T, Dt]."""
    return _implementation("dynamic_align")(hidden, mix, head_weight, head_bias)


def align_loss(pred, target, rows, loss="smooth_l1", target_norm="layernorm", pred_norm="none",
               beta=1.0, eps=1e-5):
    """Per-level loss [L]: prediction row j of sample b against target row rows[b, j], both [L, B, ·, D]."""
    return _implementation("align_loss")(pred, target, rows, loss, target_norm, pred_norm, beta, eps)


def masked_pixel_loss(pred, images, ids, patch_size, norm_pix=True, eps=1e-6):
    """MAE's loss: mean squared error of pred [B, M, p²·C] against the (normalized) image patches at ids [B, M]."""
    return _implementation("masked_pixel_loss")(pred, images, ids, patch_size, norm_pix, eps)


def block_mask(batch, grid_h, grid_w, masked, device, generator=None, min_patches=16, min_aspect=0.3, attempts=10):
    """BEiT v2's block masks on `device`: (kept [B, N − M], masked [B, M]) ascending patch indices, exactly M masked
    of the grid_h × grid_w patches in every sample (fastmim/ops/block_mask.py)."""
    return _implementation("block_mask", device)(batch, grid_h, grid_w, masked, device, generator, min_patches,
                                                 min_aspect, attempts)


__all__ = ["block_mask", "masked_patch_embed", "dynamic_align", "align_loss", "masked_pixel_loss", "set_kernels", "kernels_mode",
           "fused_ops", "check_device_errors", "cls_and_kept_rows"]
