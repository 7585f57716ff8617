"""align_loss: per-level loss between student predictions and the teacher's rows they predict (`rows`: for
MaskAlign and MR-MAE the CLS row and the kept patches, `cls_and_kept_rows(ids_keep)`; for MaskDistill the
masked patches, `1 + ids_masked`), with per-row normalization of the gathered target rows only."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_indices, check_same_device, check_tensor, guarded_indices

LOSSES = ("smooth_l1", "l2", "l1", "cosine")
ROW_NORMS = ("layernorm", "l2", "none")


def validate(pred, target, rows, loss, target_norm, pred_norm) -> None:
    check_tensor("pred", pred, ndim=4)
    check_tensor("target", target, ndim=4)
    check_choice("loss", loss, LOSSES)
    check_choice("target_norm", target_norm, ROW_NORMS)
    check_choice("pred_norm", pred_norm, ROW_NORMS)
    levels, batch, pred_rows, dim = pred.shape
    if target.shape[0] != levels or target.shape[1] != batch or target.shape[3] != dim:
        raise ValueError(
            f"target must be [{levels}, {batch}, T, {dim}] to match pred {list(pred.shape)}, got {list(target.shape)}"
        )
    check_tensor("rows", rows, ndim=2, floating=False)
    if tuple(rows.shape) != (batch, pred_rows):
        raise ValueError(f"rows must be [{batch}, {pred_rows}] to match pred, got {list(rows.shape)}")
    check_same_device("pred", pred, target=target, rows=rows)
    check_indices("rows", rows, target.shape[2])


def accumulation_dtype(pred: torch.Tensor) -> torch.dtype:
    """The loss is accumulated and returned in float32, or in float64 for float64 predictions (gradcheck)."""
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def cls_and_kept_rows(ids_keep: torch.Tensor) -> torch.Tensor:
    """The `rows` of MaskAlign and MR-MAE: row 0 (CLS) followed by 1 + each kept patch index, [B, 1+K], in a
    teacher level laid out as CLS then the N patches."""
    return torch.cat([torch.zeros_like(ids_keep[:, :1]), ids_keep + 1], dim=1)


def normalize_rows(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    if kind == "l2":
        return F.normalize(x, dim=-1, eps=1e-12)
    return x


def elementwise_loss(pred, target, loss: str, beta: float) -> torch.Tensor:
    """Mean per level over batch, rows and channels (over batch and rows for cosine)."""
    if loss == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean(dim=(1, 2))
    if loss == "smooth_l1":
        per_element = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    elif loss == "l2":
        per_element = (pred - target).square()
    else:
        per_element = (pred - target).abs()
    return per_element.mean(dim=(1, 2, 3))


def align_loss_reference(pred, target, rows, loss="smooth_l1", target_norm="layernorm", pred_norm="none",
                         beta=1.0, eps=1e-5):
    """Plain PyTorch in the accumulation dtype (float32; float64 for float64 predictions): gather the target
    rows first, then normalize only those."""
    validate(pred, target, rows, loss, target_norm, pred_norm)
    rows = guarded_indices("align_loss", "rows", rows, target.shape[2])
    acc = accumulation_dtype(pred)
    index = rows[None, :, :, None].expand(target.shape[0], -1, -1, target.shape[-1])
    rows = target.detach().gather(2, index).to(acc)
    rows = normalize_rows(rows, target_norm, eps)
    prediction = normalize_rows(pred.to(acc), pred_norm, eps)
    return elementwise_loss(prediction, rows, loss, beta)


# --- the fused op: torch.ops.<library>.align_loss (csrc/{cpu,cuda}/align_loss.*) ----------------------------

def _fake(pred, target, rows, loss="smooth_l1", target_norm="layernorm", pred_norm="none", beta=1.0,
          eps=1e-5, with_grad=True):
    losses = pred.new_empty(pred.shape[0], dtype=accumulation_dtype(pred))
    return losses, pred.new_empty(pred.shape if with_grad else (0,))


def _fake_backward(grad_loss, grad_rows, loss):
    return grad_rows.new_empty(grad_rows.shape)


def _setup_context(ctx, inputs, output):
    ctx.loss = inputs[3]
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else autograd fills a pred-sized zero gradient for output[1]
    ctx.save_for_backward(output[1])  # d(row loss)/d(pred): nothing of the teacher is kept


def register_fused(library: str = "fastmim"):
    """Register the fake kernel and autograd of `library`::align_loss (the compiled `fastmim` or the test-only
    `fastmim_emulated`) and return the function that calls it."""
    op = getattr(torch.ops, library)

    def backward(ctx, grad_loss, _):
        (grad_rows,) = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 9
        if grad_rows.dim() != 4:
            raise RuntimeError(f"{library}::align_loss ran with with_grad=False, so it kept no gradient for pred")
        return (op.align_loss_backward(grad_loss, grad_rows, ctx.loss),) + (None,) * 8

    def align_loss_fused(pred, target, rows, loss="smooth_l1", target_norm="layernorm", pred_norm="none",
                         beta=1.0, eps=1e-5):
        """The compiled kernel: one pass per row computes the loss and d(loss)/d(pred); backward only rescales."""
        validate(pred, target, rows, loss, target_norm, pred_norm)
        with_grad = pred.requires_grad and torch.is_grad_enabled()
        losses, _ = op.align_loss(pred, target, rows, loss, target_norm, pred_norm, float(beta), float(eps),
                                  with_grad)
        return losses

    torch.library.register_fake(f"{library}::align_loss", _fake)
    torch.library.register_fake(f"{library}::align_loss_backward", _fake_backward)
    torch.library.register_autograd(f"{library}::align_loss", backward, setup_context=_setup_context)
    return align_loss_fused
