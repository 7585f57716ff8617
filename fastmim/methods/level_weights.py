"""Per-level loss weights over teacher levels 1..depth: mean, out, linear_decay, topK, midK."""
from __future__ import annotations

import re


def level_weights(spec: str, depth: int) -> dict[int, float]:
    """{level: weight} for the levels with non-zero weight only (the others are never computed), levels
    numbered 1..depth, exactly as the official code's weight lists:

    - mean: every level, 1/depth each
    - out: the last level only
    - linear_decay: level i gets (i - 1) / Σ_{j<depth} j (0, 1/66, …, 11/66 for 12 levels: level 1 gets nothing)
    - topK: the last K levels, 1/K each (default top5)
    - midK: weight 1 on level K + 1 (the official list puts it at 0-based index K), K in 0..depth - 1
    """
    if spec == "mean":
        return {level: 1.0 / depth for level in range(1, depth + 1)}
    if spec == "out":
        return {depth: 1.0}
    if spec == "linear_decay":
        if depth < 2:
            raise ValueError("level_weights 'linear_decay' needs at least 2 teacher levels (level 1 gets 0)")
        total = depth * (depth - 1) / 2
        return {level: (level - 1) / total for level in range(2, depth + 1)}
    match = re.fullmatch(r"(top|mid)(\d+)", spec)
    if match:
        kind, k = match.group(1), int(match.group(2))
        if kind == "top":
            if not 1 <= k <= depth:
                raise ValueError(f"level_weights {spec!r}: K must be in 1..{depth} for a teacher of depth {depth}")
            return {level: 1.0 / k for level in range(depth - k + 1, depth + 1)}
        if not 0 <= k <= depth - 1:
            raise ValueError(f"level_weights {spec!r}: K must be in 0..{depth - 1} for a teacher of depth {depth} "
                             "(midK supervises level K + 1)")
        return {k + 1: 1.0}
    raise ValueError(f"level_weights must be mean, out, linear_decay, topK or midK (e.g. top5, mid8), got {spec!r}")
