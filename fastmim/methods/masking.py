"""Which patches the student sees: `random` (uniform, per sample) or `attention` (drawn without replacement
with probability ∝ the teacher's CLS attention). Both vectorized on the images' device."""
from __future__ import annotations

import torch

MASK_MODES = ("random", "attention")


def num_kept(num_patches: int, mask_ratio: float) -> int:
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1 - mask_ratio)))


def random_keep(batch: int, num_patches: int, keep: int, device, generator=None) -> torch.Tensor:
    """MAE's masking: argsort of uniform noise, first `keep` indices. [B, keep] int64."""
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :keep]


def attention_keep(importance: torch.Tensor, keep: int, generator=None) -> torch.Tensor:
    """Gumbel-top-k on log(importance): the top `keep` of log p + Gumbel noise are exactly a draw of `keep`
    items without replacement with probability ∝ p (the same law as torch.multinomial without replacement),
    but vectorized over the batch."""
    uniform = torch.rand(importance.shape, device=importance.device, generator=generator)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
    scores = importance.float().clamp_min(1e-30).log() + gumbel
    return scores.topk(keep, dim=1, sorted=False).indices


def keep_indices(mode: str, mask_ratio: float, batch: int, num_patches: int, device,
                 importance: torch.Tensor | None = None, generator=None) -> torch.Tensor:
    """[B, V] kept patch indices, V = int(N·(1 − mask_ratio)), sorted ascending (order does not change the
    loss; sorted rows make the gathers walk memory forward)."""
    keep = num_kept(num_patches, mask_ratio)
    if mode == "random":
        ids = random_keep(batch, num_patches, keep, device, generator)
    elif mode == "attention":
        if importance is None:
            raise ValueError("mask mode 'attention' needs the teacher's importance")
        ids = attention_keep(importance, keep, generator)
    else:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    return ids.sort(dim=1).values
