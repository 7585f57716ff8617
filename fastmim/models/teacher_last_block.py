"""The teacher's last block, written out (timm's pre-norm Block.forward), for two savings that need its inside:

- the masking importance: softmax(q_cls·Kᵀ/√d) averaged over heads, from the same q and K the block uses,
  without forming any attention map;
- once the mask is drawn from it, the rest of the block only at the rows the method reads. This block's output
  feeds no later block, so its queries, attention, projection and MLP run on the R rows asked for (MaskAlign and
  MR-MAE: the CLS row and the kept patches; MaskDistill: the masked patches) instead of all T, while K and V
  still cover every token: about half of the block's work at MaskAlign's 70 % mask. When the last level is not
  wanted at all, only K and the CLS query are computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# importance [B, N] (or None when not computed) → the mask; a mask → rows [B, R] of a level laid out as CLS then
# the N patches, or None for every row
DrawFn = Callable[[torch.Tensor | None], object]
RowsFn = Callable[[object], torch.Tensor | None]


@dataclass
class LastBlockOutput:
    x: torch.Tensor | None               # [B, T, D] every token, or [B, R, D] at `rows`; None: no output wanted
    rows: torch.Tensor | None            # [B, R] the level rows x holds (level layout), None: every token
    importance: torch.Tensor | None      # [B, N]
    mask: object | None                  # what `draw` returned


def heads_projection(x: torch.Tensor, linear: nn.Linear, part: int, num_heads: int) -> torch.Tensor:
    """Part `part` (0: q, 1: k, 2: v) of the fused qkv linear on x [B, R, D] → [B, H, R, head_dim]."""
    dim = linear.weight.shape[1]
    weight = linear.weight[part * dim:(part + 1) * dim]
    bias = linear.bias[part * dim:(part + 1) * dim] if linear.bias is not None else None
    b, r, _ = x.shape
    return F.linear(x, weight, bias).reshape(b, r, num_heads, -1).transpose(1, 2)


def block_rows(level_rows: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Level rows (CLS = 0, patch n = 1 + n) as rows of the block's input, whose patches start after
    `num_prefix` tokens (CLS and register tokens)."""
    return torch.where(level_rows == 0, level_rows, level_rows + (num_prefix - 1))


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


def draw_outside_inference(draw: DrawFn, importance: torch.Tensor | None):
    """The mask is drawn outside inference mode: the student saves its indices for backward."""
    with torch.inference_mode(False):
        return draw(importance)


def cls_importance(block: nn.Module, y: torch.Tensor, k: torch.Tensor, num_prefix: int) -> torch.Tensor:
    attn = block.attn
    q_cls = attn.q_norm(heads_projection(y[:, :1], attn.qkv, 0, attn.num_heads))
    scores = (q_cls.float() @ k.float().transpose(-2, -1)) * attn.scale  # [B, H, 1, T]
    return scores.softmax(dim=-1).mean(dim=1)[:, 0, num_prefix:]


def last_block(block: nn.Module, x: torch.Tensor, num_prefix: int, importance: bool, draw: DrawFn | None,
               need_output: bool, rows_of: RowsFn | None) -> LastBlockOutput:
    """x: the last block's input [B, T, D]. importance: compute the CLS-row importance. draw: makes the mask
    (from the importance when computed). rows_of: the level rows the output is wanted at, given the mask."""
    attn = block.attn
    y = block.norm1(x)
    k = attn.k_norm(heads_projection(y, attn.qkv, 1, attn.num_heads))
    weights = cls_importance(block, y, k, num_prefix) if importance else None
    mask = draw_outside_inference(draw, weights) if draw is not None else None
    if not need_output:
        return LastBlockOutput(None, None, weights, mask)

    rows = rows_of(mask) if rows_of is not None and mask is not None else None
    x_rows, y_rows = (x, y) if rows is None else (gather_rows(x, block_rows(rows, num_prefix)),
                                                  gather_rows(y, block_rows(rows, num_prefix)))
    q = attn.q_norm(heads_projection(y_rows, attn.qkv, 0, attn.num_heads))
    v = heads_projection(y, attn.qkv, 2, attn.num_heads)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    x_rows = x_rows + block.drop_path1(block.ls1(attn.proj(attn.norm(out))))
    x_rows = x_rows + block.drop_path2(block.ls2(block.mlp(block.norm2(x_rows))))
    return LastBlockOutput(x_rows, rows, weights, mask)
