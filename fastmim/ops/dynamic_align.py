"""dynamic_align: Dynamic Alignment mixing of student levels, optionally followed by per-level heads.

out[l] = (Σ_s mix[l, s] · hidden[s]) @ head_weight[l]ᵀ + head_bias[l]
"""
from __future__ import annotations

import torch

from ._checks import check_same_device, check_shape, check_tensor


def validate(hidden, mix, head_weight=None, head_bias=None) -> None:
    check_tensor("hidden", hidden, ndim=4)
    check_tensor("mix", mix, ndim=2)
    levels_in, _, _, dim = hidden.shape
    levels_out = mix.shape[0]
    if mix.shape[1] != levels_in:
        raise ValueError(f"mix must be [L, {levels_in}] for hidden with {levels_in} levels, got {list(mix.shape)}")
    if head_weight is None and head_bias is not None:
        raise ValueError("head_bias was given without head_weight")
    if head_weight is not None:
        check_tensor("head_weight", head_weight, ndim=3)
        check_shape("head_weight", head_weight, (levels_out, None, dim))
    if head_bias is not None:
        check_tensor("head_bias", head_bias, ndim=2)
        check_shape("head_bias", head_bias, (levels_out, head_weight.shape[1]))
    check_same_device("hidden", hidden, mix=mix, head_weight=head_weight, head_bias=head_bias)


def dynamic_align_reference(hidden, mix, head_weight=None, head_bias=None):
    """Plain PyTorch: einsum mix, then a batched matmul per level."""
    validate(hidden, mix, head_weight, head_bias)
    mixed = torch.einsum("ls,sbtd->lbtd", mix.to(hidden.dtype), hidden)
    if head_weight is None:
        return mixed
    out = torch.einsum("lbtd,led->lbte", mixed, head_weight.to(hidden.dtype))
    if head_bias is not None:
        out = out + head_bias.to(out.dtype)[:, None, None, :]
    return out
