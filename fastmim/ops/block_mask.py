"""block_mask: BEiT v2's block-wise masks (microsoft/unilm beit2/masking_generator.py) for a whole batch, on the
device that will use them, without a host synchronization.

Per sample, in rounds: up to `attempts` rectangles are tried in turn — area ~ U(min_patches, remaining), aspect
log-uniform in [min_aspect, 1/min_aspect], h = round(√(area·aspect)), w = round(√(area/aspect)), kept only when
h < grid_h and w < grid_w, at a uniform position — and the first that adds between 1 and `remaining` unmasked
patches is masked; a round that adds nothing ends the rounds; the sample is then topped up with uniformly chosen
unmasked patches to exactly `masked` (BEiT v2 does the same with np.random.choice). Returns the ascending patch
indices kept [B, N − M] and masked [B, M].

The kernels (csrc/common/block_mask_math.h; one CPU thread or one CUDA thread per sample) draw with Philox
from one seed taken from `generator`: the CPU and CUDA kernels draw from the same law with the same random
numbers, and their masks for the same seed are equal except where the GPU's fast-math rounding (its exp, square
root, division and fused multiply-adds) rounds a rectangle's side the other way — a rare sample (the GPU test
allows 1 %). The reference is plain PyTorch vectorized over the batch (every sample's attempts of a round at
once, accepted in turn from a summed-area table of the mask) and draws from `generator` itself: the same law,
other values.
"""
from __future__ import annotations

import math

import torch

MAX_SIDE = 64  # the kernels hold a patch row as one 64-bit word


def validate(batch, grid_h, grid_w, masked, min_patches, min_aspect, attempts) -> None:
    for name, value in (("batch", batch), ("grid_h", grid_h), ("grid_w", grid_w), ("masked", masked),
                        ("min_patches", min_patches), ("attempts", attempts)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if batch < 0:
        raise ValueError(f"batch must be non-negative, got {batch}")
    if not (1 <= grid_h <= MAX_SIDE and 1 <= grid_w <= MAX_SIDE):
        raise ValueError(f"the patch grid must be 1 to {MAX_SIDE} patches a side, got {grid_h}x{grid_w}")
    if not 1 <= masked < grid_h * grid_w:
        raise ValueError(f"masked must be in [1, {grid_h * grid_w - 1}] for a {grid_h}x{grid_w} grid, got {masked}")
    if min_patches < 1:
        raise ValueError(f"min_patches must be positive, got {min_patches}")
    if not 0 < min_aspect <= 1:
        raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
    if attempts < 1:
        raise ValueError(f"attempts must be positive, got {attempts}")


def reference_rounds(masked: int) -> int:
    """Rounds the reference runs (it does not look at its state, which would synchronize with the device).
    Measured over 20,000 draws of BEiT v2's loop on 14 × 14 patches: at most 12 rounds for 78 masked patches,
    18 for 118, 20 for 147. A sample that would need more is topped up after the last, as when a round adds
    nothing."""
    return 8 + masked // 8


def split_masked(is_masked: torch.Tensor, masked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, masked) ascending indices of a [B, N] mask holding exactly `masked` ones per row."""
    order = torch.argsort((~is_masked).to(torch.uint8), dim=1, stable=True)  # masked first, each part ascending
    return order[:, masked:], order[:, :masked]


def block_mask_reference(batch, grid_h, grid_w, masked, device, generator=None, min_patches=16, min_aspect=0.3,
                         attempts=10):
    """Plain PyTorch, vectorized over the batch: each round draws every sample's attempts at once, counts their
    new patches from a summed-area table of the mask and accepts each sample's first valid one."""
    validate(batch, grid_h, grid_w, masked, min_patches, min_aspect, attempts)
    n, rounds = grid_h * grid_w, reference_rounds(masked)
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    u = torch.rand(rounds, 4, batch, attempts, device=device, generator=generator)
    root_aspect = torch.exp((log_lo + u[:, 1] * (log_hi - log_lo)) / 2)  # √aspect, for every round up front
    mask = torch.zeros(batch, grid_h, grid_w, device=device)
    count = torch.zeros(batch, 1, device=device)
    active = torch.ones(batch, 1, dtype=torch.bool, device=device)  # a round that adds nothing ends a sample
    sat = torch.zeros(batch, grid_h + 1, grid_w + 1, device=device)  # summed-area table, zero first row/column
    corner_sign = torch.ones(1, 4, 1, device=device)
    corner_sign[:, 1:3] = -1  # +, −, −, +; from a Python list it was a host copy that waits for the stream
    rows = torch.arange(grid_h, device=device).view(1, grid_h)
    cols = torch.arange(grid_w, device=device).view(1, grid_w)
    for r in range(rounds):
        remaining = masked - count
        side = torch.sqrt(min_patches + u[r, 0] * (remaining - min_patches))  # √area
        h, w = torch.round(side * root_aspect[r]), torch.round(side / root_aspect[r])
        top = torch.floor(u[r, 2] * (grid_h - h + 1)).clamp(min=0)
        left = torch.floor(u[r, 3] * (grid_w - w + 1)).clamp(min=0)
        bottom, right = (top + h).clamp(max=grid_h), (left + w).clamp(max=grid_w)
        sat[:, 1:, 1:] = mask.cumsum(1).cumsum(2)
        corners = torch.cat([bottom * (grid_w + 1) + right, top * (grid_w + 1) + right,
                             bottom * (grid_w + 1) + left, top * (grid_w + 1) + left], dim=1).long()
        covered = (sat.view(batch, -1).gather(1, corners).view(batch, 4, attempts) * corner_sign).sum(1)
        new = h * w - covered
        valid = (h >= 1) & (w >= 1) & (h < grid_h) & (w < grid_w) & (new > 0) & (new <= remaining) & active
        first = valid.float().argmax(dim=1, keepdim=True)  # the first valid attempt (argmax: first maximum)
        accept = valid.gather(1, first)
        pick = lambda x: x.gather(1, first)  # noqa: E731
        in_rows = (rows >= pick(top)) & (rows < pick(bottom))
        in_cols = (cols >= pick(left)) & (cols < pick(right))
        mask = torch.maximum(mask, (in_rows[:, :, None] & in_cols[:, None, :] & accept[:, :, None]).float())
        count = count + pick(new) * accept
        active = accept
    # exactly M: the masked patches, then others chosen uniformly (the largest of uniform scores)
    key = mask.view(batch, n) * 2 + torch.rand(batch, n, device=device, generator=generator)
    chosen = torch.zeros(batch, n, dtype=torch.bool, device=device)
    chosen.scatter_(1, key.topk(masked, dim=1).indices, True)
    return split_masked(chosen, masked)


def draw_seed(device, generator=None) -> torch.Tensor:
    """The kernels' Philox key: one int64 drawn on `device` from `generator` (no host synchronization)."""
    return torch.randint(0, 2**62, (1,), device=device, generator=generator, dtype=torch.int64)


# --- the fused op: torch.ops.<library>.block_mask (csrc/{cpu,cuda}/block_mask.*) ----------------------------

def _fake(seed, batch, grid_h, grid_w, masked, min_patches=16, min_aspect=0.3, attempts=10):
    return seed.new_empty((batch, grid_h * grid_w - masked)), seed.new_empty((batch, masked))


def register_fused(library: str = "fastmim"):
    """Register the fake kernel of `library`::block_mask and return the function that calls it."""
    op = getattr(torch.ops, library)

    def block_mask_fused(batch, grid_h, grid_w, masked, device, generator=None, min_patches=16, min_aspect=0.3,
                         attempts=10):
        """The compiled kernel: one thread per sample, Philox keyed by a seed drawn from `generator`."""
        validate(batch, grid_h, grid_w, masked, min_patches, min_aspect, attempts)
        return op.block_mask(draw_seed(device, generator), batch, grid_h, grid_w, masked, min_patches,
                             float(min_aspect), attempts)

    torch.library.register_fake(f"{library}::block_mask", _fake)
    return block_mask_fused
