"""fastmim's drop-in ops (DESIGN §4). Each runs the compiled kernel when available, else its reference."""
from ._backend import check_device_errors, fused_ops, kernels_mode, set_kernels
from ._backend import implementation as _implementation

fused_ops()  # loads fastmim._C when built and registers the ops' fake kernels, autograd and autocast


def masked_patch_embed(images, ids_keep, weight, bias=None, pos_embed=None):
    """Patch-embed only the kept patches: [B, C, H, W] images, [B, K] ids → [B, K, D]."""
    return _implementation("masked_patch_embed")(images, ids_keep, weight, bias, pos_embed)


def dynamic_align(hidden, mix, head_weight=None, head_bias=None):
    """Mix [S, B, T, D] student levels with mix [L, S], then optional per-level heads → [L, B, T, Dt]."""
    return _implementation("dynamic_align")(hidden, mix, head_weight, head_bias)


def align_loss(pred, target, ids_keep, loss="smooth_l1", target_norm="layernorm", pred_norm="none",
               beta=1.0, eps=1e-5):
    """Per-level loss [L] between predictions at CLS + kept tokens and the teacher's matching rows."""
    return _implementation("align_loss")(pred, target, ids_keep, loss, target_norm, pred_norm, beta, eps)


__all__ = ["masked_patch_embed", "dynamic_align", "align_loss", "set_kernels", "kernels_mode", "fused_ops",
           "check_device_errors"]
