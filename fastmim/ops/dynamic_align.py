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


# --- the fused op: torch.ops.<library>.dynamic_align (csrc/{cpu,cuda}/dynamic_align.*) ----------------------

def _fake(hidden, mix, head_weight=None, head_bias=None):
    out_dim = hidden.shape[3] if head_weight is None else head_weight.shape[1]
    return hidden.new_empty(mix.shape[0], hidden.shape[1], hidden.shape[2], out_dim)


def _fake_backward(grad_out, hidden, mix, head_weight, output_mask):
    empty = hidden.new_empty(0)
    grad_hidden = hidden.new_empty(hidden.shape) if output_mask[0] else empty
    grad_mix = mix.new_empty(mix.shape) if output_mask[1] else empty
    grad_weight = hidden.new_empty(head_weight.shape) if output_mask[2] else empty
    grad_bias = hidden.new_empty(head_weight.shape[:2]) if output_mask[3] else empty
    return grad_hidden, grad_mix, grad_weight, grad_bias


def _setup_context(ctx, inputs, output):
    hidden, mix, head_weight, head_bias = inputs
    ctx.save_for_backward(hidden, mix, head_weight)  # not the mixed levels: backward recomputes them
    ctx.has_weight, ctx.has_bias = head_weight is not None, head_bias is not None


def register_fused(library: str = "fastmim"):
    """Register the fake kernel, autograd and autocast rule of `library`::dynamic_align and return the function
    that calls it."""
    from . import _autocast

    op = getattr(torch.ops, library)

    def backward(ctx, grad):
        hidden, mix, head_weight = ctx.saved_tensors
        wanted = ctx.needs_input_grad
        mask = [wanted[0], wanted[1], ctx.has_weight and wanted[2], ctx.has_bias and wanted[3]]
        grads = op.dynamic_align_backward(grad, hidden, mix, head_weight, mask)
        return tuple(g if m else None for g, m in zip(grads, mask))

    def dynamic_align_fused(hidden, mix, head_weight=None, head_bias=None):
        """The compiled kernel: a mixing pass over the S levels, then one batched GEMM; backward recomputes the
        mix."""
        validate(hidden, mix, head_weight, head_bias)
        if head_weight is not None and head_weight.dtype != hidden.dtype:
            head_weight = head_weight.to(hidden.dtype)  # as the reference
        if head_bias is not None and head_bias.dtype != hidden.dtype:
            head_bias = head_bias.to(hidden.dtype)
        return op.dynamic_align(hidden, mix, head_weight, head_bias)

    torch.library.register_fake(f"{library}::dynamic_align", _fake)
    torch.library.register_fake(f"{library}::dynamic_align_backward", _fake_backward)
    torch.library.register_autograd(f"{library}::dynamic_align", backward, setup_context=_setup_context)
    _autocast.register(library, "dynamic_align")  # the reference's einsums run in the autocast dtype; so does this
    return dynamic_align_fused
