"""The teacher's last block, written out (timm's pre-norm Block.forward), for two savings that need its inside:

- the masking importance: softmax(q_cls·Kᵀ/√d) averaged over heads, from the same q and K the block uses,
  without forming any attention map;
- once the mask is drawn from it, the rest of the block only at the rows anything reads. This block's output
  feeds no later block and the loss compares only the CLS row and the kept patches, so its queries, attention,
  projection and MLP run on 1 + K rows instead of all T (K and V still cover every token): about half of the
  block's work at the default 70 % mask. When the last level is not supervised at all, only K and the CLS
  query are computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# importance [B, N] (or None in random mode) → ids_keep [B, K]
KeepFn = Callable[[torch.Tensor | None], torch.Tensor]


@dataclass
class LastBlockOutput:
    x: torch.Tensor | None               # [B, T, D], or [B, 1+K, D] at CLS + kept rows; None: no output wanted
    kept_rows_only: bool                 # x holds the CLS row and the kept patch rows (in ids_keep order)
    importance: torch.Tensor | None      # [B, N]
    ids_keep: torch.Tensor | None        # [B, K], when a keep function was given


def heads_projection(x: torch.Tensor, linear: nn.Linear, part: int, num_heads: int) -> torch.Tensor:
    """Part `part` (0: q, 1: k, 2: v) of the fused qkv linear on x [B, R, D] → [B, H, R, head_dim]."""
    dim = linear.weight.shape[1]
    weight = linear.weight[part * dim:(part + 1) * dim]
    bias = linear.bias[part * dim:(part + 1) * dim] if linear.bias is not None else None
    b, r, _ = x.shape
    return F.linear(x, weight, bias).reshape(b, r, num_heads, -1).transpose(1, 2)


def cls_and_kept_rows(ids_keep: torch.Tensor, first_patch_row: int) -> torch.Tensor:
    """[B, 1+K] row indices: the CLS row 0, then each kept patch in a layout whose patches start at
    `first_patch_row` (the number of prefix tokens in the block's input; 1 in the returned levels)."""
    return torch.cat([torch.zeros_like(ids_keep[:, :1]), ids_keep + first_patch_row], dim=1)


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


def draw_keep(keep: KeepFn, importance: torch.Tensor | None) -> torch.Tensor:
    """The mask is drawn outside inference mode: the student saves ids_keep for its backward."""
    with torch.inference_mode(False):
        return keep(importance)


def last_block(block: nn.Module, x: torch.Tensor, num_prefix: int, importance: bool, keep: KeepFn | None,
               need_output: bool, all_rows: bool) -> LastBlockOutput:
    """x: the last block's input [B, T, D]. importance: compute the CLS-row importance. keep: draws the mask
    (from the importance when computed); the output is then computed at the CLS row and the kept patch rows
    only, unless all_rows (batch-statistics targets read every row)."""
    attn = block.attn
    heads = attn.num_heads
    y = block.norm1(x)
    k = attn.k_norm(heads_projection(y, attn.qkv, 1, heads))
    q_cls = attn.q_norm(heads_projection(y[:, :1], attn.qkv, 0, heads))
    cls_importance = None
    if importance:
        scores = (q_cls.float() @ k.float().transpose(-2, -1)) * attn.scale  # [B, H, 1, T]
        cls_importance = scores.softmax(dim=-1).mean(dim=1)[:, 0, num_prefix:]
    ids_keep = draw_keep(keep, cls_importance) if keep is not None else None
    if not need_output:
        return LastBlockOutput(None, False, cls_importance, ids_keep)

    kept_rows_only = ids_keep is not None and not all_rows
    if not kept_rows_only:
        x_rows, y_rest = x, y[:, 1:]
    else:
        rows = cls_and_kept_rows(ids_keep, num_prefix)
        x_rows, y_rest = gather_rows(x, rows), gather_rows(y, rows[:, 1:])
    q = torch.cat([q_cls, attn.q_norm(heads_projection(y_rest, attn.qkv, 0, heads))], dim=2)
    v = heads_projection(y, attn.qkv, 2, heads)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    x_rows = x_rows + block.drop_path1(block.ls1(attn.proj(attn.norm(out))))
    x_rows = x_rows + block.drop_path2(block.ls2(block.mlp(block.norm2(x_rows))))
    return LastBlockOutput(x_rows, kept_rows_only, cls_importance, ids_keep)
