"""The teacher's last block, written out (timm's pre-norm Block.forward), for two savings that need its inside:

- the masking importance: softmax(q_cls·Kᵀ/√d) averaged over heads, from the same q and K the block uses,
  without forming any attention map;
- once the method has drawn its mask from it, the rest of the block only at the rows the method reads. This
  block's output feeds no later block, so its queries, attention, projection and MLP run on the R rows asked for
  (MaskAlign and MR-MAE: the CLS row and the kept patches; MaskDistill: the masked patches) instead of all T,
  while K and V still cover every token: about half of the block's work at MaskAlign's 70 % mask. When the last
  level is not wanted at all, only K and the CLS query are computed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def cls_importance(block: nn.Module, y: torch.Tensor, k: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """[B, N]: softmax(q_cls·Kᵀ/√d) over every key, averaged over heads, the prefix columns dropped."""
    attn = block.attn
    q_cls = attn.q_norm(heads_projection(y[:, :1], attn.qkv, 0, attn.num_heads))
    scores = (q_cls.float() @ k.float().transpose(-2, -1)) * attn.scale  # [B, H, 1, T]
    return scores.softmax(dim=-1).mean(dim=1)[:, 0, num_prefix:]


def keys(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the block's normalized input y [B, T, D], its keys [B, H, T, head_dim]): what both the importance and the
    rows' attention need."""
    y = block.norm1(x)
    return y, block.attn.k_norm(heads_projection(y, block.attn.qkv, 1, block.attn.num_heads))


def rows_output(block: nn.Module, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, rows: torch.Tensor | None,
                num_prefix: int) -> torch.Tensor:
    """The block's output at level rows `rows` [B, R] ([B, R, D]), or at every token when rows is None
    ([B, T, D]): queries, attention, projection and MLP at those rows; keys and values over every token."""
    attn = block.attn
    x_rows, y_rows = (x, y) if rows is None else (gather_rows(x, block_rows(rows, num_prefix)),
                                                  gather_rows(y, block_rows(rows, num_prefix)))
    q = attn.q_norm(heads_projection(y_rows, attn.qkv, 0, attn.num_heads))
    v = heads_projection(y, attn.qkv, 2, attn.num_heads)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    x_rows = x_rows + block.drop_path1(block.ls1(attn.proj(attn.norm(out))))
    return x_rows + block.drop_path2(block.ls2(block.mlp(block.norm2(x_rows))))
