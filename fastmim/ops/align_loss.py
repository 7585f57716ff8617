"""align_loss: per-level loss between student predictions at CLS + kept tokens and the teacher's rows
at the same tokens, with per-row normalization of the gathered target rows only."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_indices, check_same_device, check_tensor

LOSSES = ("smooth_l1", "l2", "l1", "cosine")
ROW_NORMS = ("layernorm", "l2", "none")


def validate(pred, target, ids_keep, loss, target_norm, pred_norm) -> None:
    check_tensor("pred", pred, ndim=4)
    check_tensor("target", target, ndim=4)
    check_choice("loss", loss, LOSSES)
    check_choice("target_norm", target_norm, ROW_NORMS)
    check_choice("pred_norm", pred_norm, ROW_NORMS)
    levels, batch, rows, dim = pred.shape
    if target.shape[0] != levels or target.shape[1] != batch or target.shape[3] != dim:
        raise ValueError(
            f"target must be [{levels}, {batch}, 1+N, {dim}] to match pred {list(pred.shape)}, "
            f"got {list(target.shape)}"
        )
    if ids_keep.dim() != 2 or tuple(ids_keep.shape) != (batch, rows - 1):
        raise ValueError(f"ids_keep must be [{batch}, {rows - 1}] to match pred, got {list(ids_keep.shape)}")
    check_indices("ids_keep", ids_keep, target.shape[2] - 1)
    check_same_device("pred", pred, target=target, ids_keep=ids_keep)


def target_row_index(ids_keep: torch.Tensor) -> torch.Tensor:
    """Row 0 (CLS) followed by 1 + each kept patch index: [B, 1+K]."""
    cls_row = torch.zeros_like(ids_keep[:, :1])
    return torch.cat([cls_row, ids_keep + 1], dim=1)


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


def align_loss_reference(pred, target, ids_keep, loss="smooth_l1", target_norm="layernorm",
                         pred_norm="none", beta=1.0, eps=1e-5):
    """Plain PyTorch in float32: gather the kept target rows first, then normalize only those."""
    validate(pred, target, ids_keep, loss, target_norm, pred_norm)
    index = target_row_index(ids_keep)
    index = index[None, :, :, None].expand(target.shape[0], -1, -1, target.shape[-1])
    rows = target.detach().gather(2, index).float()
    rows = normalize_rows(rows, target_norm, eps)
    prediction = normalize_rows(pred.float(), pred_norm, eps)
    return elementwise_loss(prediction, rows, loss, beta)  # float32 whatever the input dtype
