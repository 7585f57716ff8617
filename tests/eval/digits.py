"""scikit-learn's digits (1,797 real handwritten 8 × 8 images, shipped with the package: no download) as
ImageFolder trees of RGB PNGs, upscaled for ViTs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target  # [1797, 8, 8] in 0..16, [1797]


def write_split(root: Path, images: np.ndarray, labels: np.ndarray, size: int) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        grey.convert("RGB").save(folder / f"{i:04d}.png")
    return root


def write_digits(root: Path, size: int = 64, per_class: int | None = None, seed: int = 0) -> tuple[Path, Path]:
    """(train, val) ImageFolders: `per_class` training images of each digit (all others: val)."""
    images, labels = digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    train_rows, val_rows = [], []
    counts = {}
    for i in order:
        c = int(labels[i])
        if per_class is None or counts.get(c, 0) < per_class:
            train_rows.append(i)
            counts[c] = counts.get(c, 0) + 1
        else:
            val_rows.append(i)
    if per_class is None:  # a plain 80/20 split
        cut = int(0.8 * len(order))
        train_rows, val_rows = list(order[:cut]), list(order[cut:])
    return (write_split(root / "train", images[train_rows], labels[train_rows], size),
            write_split(root / "val", images[val_rows], labels[val_rows], size))
