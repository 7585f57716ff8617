"""Which patches the student sees, as values: a `Mask` holds `ids_keep` [B, V] and `ids_masked` [B, M]
(V + M = N, each row a split of the N patches, both sorted ascending), drawn on the images' device without a
host synchronization. Methods pass it along; nothing keeps it as state.

- `random`: MAE's masking, the argsort of uniform noise.
- `attention`: drawn without replacement with probability ∝ the teacher's CLS importance (MaskAlign's default,
  MR-MAE's "focused mimicking"), by Gumbel-top-k.
- `block`: BEiT v2's block-wise masking (MaskDistill), rectangles added until the masked count is reached
  (fastmim.ops.block_mask: one kernel for the batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch

from fastmim import ops

MASK_MODES = ("random", "attention", "block")


@dataclass
class Mask:
    ids_keep: torch.Tensor    # [B, V] int64, the patches the student sees
    ids_masked: torch.Tensor  # [B, M] int64, the others

    @property
    def num_patches(self) -> int:
        return self.ids_keep.shape[1] + self.ids_masked.shape[1]


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """V = int(N·(1 − mask_ratio)), at least one: 58 of 196 at 0.7, 49 at 0.75."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1 - mask_ratio)))


def split(order: torch.Tensor, keep: int) -> Mask:
    """The first `keep` patches of each row of `order` are kept; both parts sorted (order does not change any
    loss, and sorted rows make the gathers walk memory forward)."""
    return Mask(order[:, :keep].sort(dim=1).values, order[:, keep:].sort(dim=1).values)


def random_mask(batch: int, num_patches: int, mask_ratio: float, device, generator=None) -> Mask:
    """MAE's masking: argsort of uniform noise, the first V indices kept."""
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    return split(noise.argsort(dim=1), num_kept(num_patches, mask_ratio))


def attention_mask(importance: torch.Tensor, mask_ratio: float, generator=None) -> Mask:
    """Gumbel-top-k on log(importance) [B, N]: the top V of log p + Gumbel noise are exactly a draw of V items
    without replacement with probability ∝ p (the law of torch.multinomial without replacement), vectorized."""
    uniform = torch.rand(importance.shape, device=importance.device, generator=generator)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
    scores = importance.float().clamp_min(1e-30).log() + gumbel
    return split(scores.argsort(dim=1, descending=True), num_kept(importance.shape[1], mask_ratio))


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """M = int(N·mask_ratio), the block masks' count: 78 of 196 at 0.4."""
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    return int(num_patches * mask_ratio)


def block_mask(batch: int, grid_h: int, grid_w: int, mask_ratio: float, device, generator=None,
               min_patches: int = 16, min_aspect: float = 0.3, attempts: int = 10) -> Mask:
    """BEiT v2's block-wise masks with M = int(N·mask_ratio) masked patches (fastmim.ops.block_mask: rectangles
    of at least `min_patches` patches and aspect in [min_aspect, 1/min_aspect], added until M are masked, topped
    up at random), for the whole batch on `device`."""
    masked = num_masked(grid_h * grid_w, mask_ratio)
    keep, ids_masked = ops.block_mask(batch, grid_h, grid_w, masked, device, generator, min_patches, min_aspect,
                                      attempts)
    return Mask(keep, ids_masked)


def draw_mask(mode: str, mask_ratio: float, batch: int, num_patches: int, device,
              importance: torch.Tensor | None = None, generator=None) -> Mask:
    if mode == "random":
        return random_mask(batch, num_patches, mask_ratio, device, generator)
    if mode == "attention":
        if importance is None:
            raise ValueError("mask mode 'attention' needs the teacher's importance")
        return attention_mask(importance, mask_ratio, generator)
    if mode == "block":
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"mask mode 'block' needs a square patch grid, got {num_patches} patches")
        return block_mask(batch, side, side, mask_ratio, device, generator)
    raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
