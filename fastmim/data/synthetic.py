"""The built-in synthetic image set: procedural pictures made on the fly, no files.

Image i is a function of (seed, i) only, so any worker on any rank renders the same picture. Each one is a
gradient background with a few rotated rectangles, ellipses and bands filled with solid colours, stripes,
checkerboards or gradients, plus a little grain: edges, textures and object-like regions at several scales,
so a masked-image-modeling objective has something to learn (constant noise would not do).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image


class SyntheticImages:
    """`len(images)` pictures of `size`×`size` RGB; `images.load(i)` renders picture i as a PIL image."""

    def __init__(self, count: int, seed: int = 0, size: int = 256):
        if count <= 0:
            raise ValueError(f"data.synthetic_images must be positive, got {count}")
        self.count, self.seed, self.size = count, seed, size

    def __len__(self) -> int:
        return self.count

    def describe(self, index: int) -> str:
        return f"synthetic image {index}"

    def load(self, index: int) -> Image.Image:
        if not 0 <= index < self.count:
            raise IndexError(f"synthetic image {index} out of range [0, {self.count})")
        # Drawn at half the size and enlarged: 4× fewer pixels to paint, the same shapes and textures.
        small = Image.fromarray(render(self.seed, index, max(1, self.size // 2)))
        return small.resize((self.size, self.size), Image.BILINEAR)


def render(seed: int, index: int, size: int) -> np.ndarray:
    """[size, size, 3] uint8 picture number `index` of the set drawn with `seed`."""
    rng = np.random.default_rng([seed, index])
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = np.broadcast_arrays(axis[None, :], axis[:, None])
    everywhere = np.ones((size, size), dtype=bool)
    image = np.empty((size, size, 3), dtype=np.float32)
    _paint(rng, image, x, y, everywhere, kind=3)  # background: a linear or radial gradient
    for _ in range(int(rng.integers(3, 9))):
        _paint(rng, image, x, y, _shape_mask(rng, x, y), kind=int(rng.integers(4)))
    # Grain: a window of a fixed noise texture at a random offset (drawing fresh noise costs more than the rest).
    oy, ox = rng.integers(0, _grain(size).shape[0] - size, 2)
    image += _grain(size)[oy:oy + size, ox:ox + size]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _grain(size: int) -> np.ndarray:
    return np.random.default_rng(12345).normal(0.0, 0.02, (2 * size, 2 * size, 1)).astype(np.float32)


def _frame(rng, x, y, spread: float = 0.8):
    """Coordinates rotated by a random angle around a random centre (within ±spread)."""
    angle = rng.uniform(0.0, math.pi)
    cx, cy = rng.uniform(-spread, spread, 2)
    c, s = math.cos(angle), math.sin(angle)
    return (x - cx) * c + (y - cy) * s, (y - cy) * c - (x - cx) * s


def _shape_mask(rng, x, y, kind: int | None = None, sizes: tuple = (0.08, 0.6), spread: float = 0.8,
                band: float = 1 / 3) -> np.ndarray:
    """A rectangle, an ellipse or a band (`kind` 0, 1, 2; drawn when None) of half-sizes in `sizes` (a band's
    half-width is `band` of its size), centred within ±spread."""
    u, v = _frame(rng, x, y, spread)
    a, b = rng.uniform(*sizes, 2)
    kind = int(rng.integers(3)) if kind is None else kind
    if kind == 0:  # rectangle
        return (np.abs(u) < a) & (np.abs(v) < b)
    if kind == 1:  # ellipse
        return (u / a) ** 2 + (v / b) ** 2 < 1.0
    return np.abs(u) < a * band  # band across the picture


def _paint(rng, image, x, y, mask, kind: int, coarse: bool = False) -> None:
    """Fill the pixels under `mask` with a solid colour, stripes, a checkerboard or a gradient between two colours
    (`coarse`: wide stripes and cells, which survive a small image)."""
    c0, c1 = rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32)
    u, v = _frame(rng, x[mask], y[mask])  # only the covered pixels: cost follows the shape's area
    if kind == 0:  # solid
        image[mask] = c0
        return
    if kind == 1:  # stripes
        t = (np.sin(u * (rng.uniform(6.0, 10.0) if coarse else rng.uniform(8.0, 40.0))) > 0).astype(np.float32)
    elif kind == 2:  # checkerboard
        cell = rng.uniform(0.15, 0.3) if coarse else rng.uniform(0.05, 0.3)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif rng.uniform() < 0.5:  # linear gradient
        t = np.clip((u + 1.5) / 3.0, 0.0, 1.0)
    else:  # radial gradient
        t = np.clip(np.sqrt(u ** 2 + v ** 2) / 2.0, 0.0, 1.0)
    image[mask] = c0 + (c1 - c0) * t[:, None]


class LabelledSyntheticImages(SyntheticImages):
    """The built-in labelled set (fine-tuning's demo, no download): picture i belongs to class i mod `classes`;
    its class is how its one large object is filled — solid, stripes, checkerboard, gradient — and, past four
    classes, also its shape (rectangle, ellipse, band), over a gradient background with a small solid distractor
    and grain. The object's colours, size, angle and place are random."""

    SHAPES, FILLS = 3, 4

    def __init__(self, count: int, classes: int, seed: int = 0, size: int = 256):
        if not 2 <= classes <= self.SHAPES * self.FILLS:
            raise ValueError(f"data.synthetic_classes must be in 2..{self.SHAPES * self.FILLS}, got {classes}")
        super().__init__(count, seed, size)
        self.classes = [f"class_{c:02d}" for c in range(classes)]
        self.labels = [i % classes for i in range(count)]

    def load(self, index: int) -> Image.Image:
        if not 0 <= index < self.count:
            raise IndexError(f"synthetic image {index} out of range [0, {self.count})")
        small = Image.fromarray(render_labelled(self.seed, index, max(1, self.size // 2), self.labels[index]))
        return small.resize((self.size, self.size), Image.BILINEAR)


def render_labelled(seed: int, index: int, size: int, label: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index, 1])  # another stream than the unlabelled set's
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = np.broadcast_arrays(axis[None, :], axis[:, None])
    image = np.empty((size, size, 3), dtype=np.float32)
    _paint(rng, image, x, y, np.ones((size, size), dtype=bool), kind=3)
    if rng.uniform() < 0.5:  # a distractor: small and solid
        _paint(rng, image, x, y, _shape_mask(rng, x, y, sizes=(0.06, 0.14)), kind=0)
    fill, shape = label % LabelledSyntheticImages.FILLS, label // LabelledSyntheticImages.FILLS  # up to 4: fills
    mask = _shape_mask(rng, x, y, kind=shape, sizes=(0.45, 0.7), spread=0.25, band=0.45)
    _paint(rng, image, x, y, mask, kind=fill, coarse=True)
    oy, ox = rng.integers(0, _grain(size).shape[0] - size, 2)
    image += _grain(size)[oy:oy + size, ox:ox + size]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
