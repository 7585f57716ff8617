"""BEiT v2's MaskingGenerator (microsoft/unilm beit2/masking_generator.py), transcribed for the tests: its
per-sample Python loop, drawing from a `random.Random`, and the connected-component statistics the block-mask
tests compare."""
from __future__ import annotations

import math
import random

import numpy as np


def beit_block_mask(rng: random.Random, height: int, width: int, num_masking_patches: int,
                    min_num_patches: int = 16, min_aspect: float = 0.3) -> np.ndarray:
    """[height, width] int32, 1 where masked, exactly num_masking_patches ones."""
    max_num_patches = num_masking_patches
    log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = np.zeros((height, width), dtype=np.int32)

    def add_block(max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = rng.uniform(min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < width and h < height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        return delta

    mask_count = 0
    while mask_count < num_masking_patches:
        delta = add_block(min(num_masking_patches - mask_count, max_num_patches))
        if delta == 0:
            break
        mask_count += delta
    if mask_count < num_masking_patches:  # (more than the count cannot happen: each block fits what is left)
        ys, xs = (mask == 0).nonzero()
        pick = np.random.default_rng(rng.randrange(2**32)).choice(ys.shape[0], num_masking_patches - mask_count,
                                                                 replace=False)
        mask[ys[pick], xs[pick]] = 1
    return mask


def components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of the ones."""
    seen = np.zeros_like(mask, dtype=bool)
    sizes = []
    for y, x in zip(*mask.nonzero()):
        if seen[y, x]:
            continue
        stack, size = [(y, x)], 0
        seen[y, x] = True
        while stack:
            i, j = stack.pop()
            size += 1
            for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and mask[a, b] and not seen[a, b]:
                    seen[a, b] = True
                    stack.append((a, b))
        sizes.append(size)
    return sizes
