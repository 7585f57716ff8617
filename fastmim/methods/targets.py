"""Target normalizations that are not per row. `batchnorm`: one mean and (unbiased) variance over the whole
level tensor — all samples, tokens and channels — taken before the gather, as the official code."""
from __future__ import annotations

import torch


def batchnorm_targets(levels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """levels [L, B, T, D] → each level standardized by its own global statistics (float32)."""
    flat = levels.float().flatten(1)
    mean = flat.mean(dim=1)
    std = (flat.var(dim=1, unbiased=True) + eps).sqrt()
    return (levels.float() - mean[:, None, None, None]) / std[:, None, None, None]
