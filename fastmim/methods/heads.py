"""Dynamic Alignment mixing weights and the per-level heads (student width → teacher width)."""
from __future__ import annotations

import typing

import torch
import torch.nn as nn

from .configs import Fusion, Head

FUSIONS, HEADS = typing.get_args(Fusion), typing.get_args(Head)


def initial_mix(fusion: str, teacher_depth: int, student_depth: int) -> torch.Tensor | None:
    """The learnable DA matrix W [teacher levels, student levels], or None for `simple` (no mixing)."""
    if fusion == "linear":
        if teacher_depth != student_depth:
            raise ValueError(
                f"fusion 'linear' needs equal depths, got student {student_depth} and teacher {teacher_depth}; "
                "use fusion 'sum' for a deeper or shallower student"
            )
        return torch.eye(student_depth) + 0.01
    if fusion == "sum":
        return torch.full((teacher_depth, student_depth), 1.0 / student_depth)
    if fusion == "simple":
        return None
    raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


def xavier_linear(dim_in: int, dim_out: int) -> nn.Linear:
    layer = nn.Linear(dim_in, dim_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def make_head(kind: str, dim_in: int, dim_out: int) -> nn.Module:
    """student width D → teacher width Dt; hidden layers keep the student's width and LayerNorms use eps 1e-6,
    as the official code's heads."""
    if kind == "linear":
        return xavier_linear(dim_in, dim_out)
    if kind == "norm_linear":
        return nn.Sequential(nn.LayerNorm(dim_in, eps=1e-6), xavier_linear(dim_in, dim_out))
    if kind == "mlp":
        return nn.Sequential(xavier_linear(dim_in, dim_in), nn.GELU(), xavier_linear(dim_in, dim_out))
    if kind == "mlp2":
        return nn.Sequential(xavier_linear(dim_in, dim_in), nn.LayerNorm(dim_in, eps=1e-6),
                             xavier_linear(dim_in, dim_out))
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
