"""Per-iteration learning rate: linear warmup, then half-cosine from the peak down to min_lr."""
from __future__ import annotations

import math


def learning_rate(step: int, peak: float, minimum: float, warmup_steps: int, total_steps: int) -> float:
    """lr for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return minimum + (peak - minimum) * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: base lr × global batch / 256."""
    return base_lr * global_batch / 256
