"""Per-level loss weights over teacher levels 1..depth: mean, out, linear_decay, topK, midK."""
from __future__ import annotations

import re


def level_weights(spec: str, depth: int) -> dict[int, float]:
    """{level: weight} for the levels with non-zero weight only (the others are never computed).

    - mean: every level, 1/depth each
    - out: the last level only
    - linear_decay: weight ∝ level index, decaying linearly from the output back to level 1; sums to 1
    - topK: the last K levels, 1/K each (default top5)
    - midK: level K only
    """
    if spec == "mean":
        return {level: 1.0 / depth for level in range(1, depth + 1)}
    if spec == "out":
        return {depth: 1.0}
    if spec == "linear_decay":
        total = depth * (depth + 1) / 2
        return {level: level / total for level in range(1, depth + 1)}
    match = re.fullmatch(r"(top|mid)(\d+)", spec)
    if match:
        kind, k = match.group(1), int(match.group(2))
        if not 1 <= k <= depth:
            raise ValueError(f"level_weights {spec!r}: K must be in 1..{depth} for a teacher of depth {depth}")
        if kind == "top":
            return {level: 1.0 / k for level in range(depth - k + 1, depth + 1)}
        return {k: 1.0}
    raise ValueError(f"level_weights must be mean, out, linear_decay, topK or midK (e.g. top5, mid8), got {spec!r}")
