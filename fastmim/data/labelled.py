"""Labelled images for fine-tuning: the sources (an ImageFolder tree in torchvision's class order, or the built-in
labelled synthetic set), MAE's fine-tuning training transform (timm's create_transform, called as MAE's
build_transform calls it) made reproducible per image, and the validation loader.

timm's RandAugment and random erasing draw from Python's, NumPy's and torch's global random generators. Each
image is transformed with all three seeded from (seed, epoch, index) and put back afterwards, so an image's
augmentation depends on nothing else — not the worker that loads it, not where a run was resumed — and the
trainer's own random streams (masks, mixup, drop path) are untouched."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DataConfig
from .folder import ImageFiles

SYNTHETIC_VALIDATION = "synthetic"  # data.val naming the built-in labelled set's validation images


class LabelledFiles(ImageFiles):
    """An ImageFolder tree as a source: `files`, `labels` and `classes` in torchvision's ImageFolder order (classes
    sorted by folder name, files by path), `load(i)` decodes file i to RGB."""

    def __init__(self, root: str | Path, classes: list[str] | None = None):
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        try:
            found, class_to_index = find_classes(str(root))
            samples = make_dataset(str(root), class_to_index, IMG_EXTENSIONS)
        except FileNotFoundError as error:  # no class folder, or a class folder without images
            raise ValueError(f"{str(root)!r} is not a labelled ImageFolder tree (one subfolder of images per "
                             f"class): {error}") from None
        self.classes = classes if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ValueError(f"{str(root)!r} has classes the training set lacks: {', '.join(unknown[:5])}")
        super().__init__([path for path, _ in samples])
        self.labels = [self.classes.index(found[label]) for _, label in samples]


def posterize_zero_bits(img, bits_to_keep, **kwargs):
    """timm's posterize, with the 0 bits its RandAugment asks for at the top of its magnitude range (PosterizeIncreasing
    keeps 4 down to 0 bits): Pillow before 11 made that a black image, newer Pillow refuses it with a ValueError
    that would end the run. Same result as before, every Pillow."""
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return posterize_zero_bits.timm(img, bits_to_keep, **kwargs)


def keep_timm_posterize_working() -> None:
    import timm.data.auto_augment as auto_augment

    if not hasattr(posterize_zero_bits, "timm"):
        posterize_zero_bits.timm = auto_augment.posterize
    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is posterize_zero_bits.timm:
            auto_augment.NAME_TO_OP[name] = posterize_zero_bits


def finetune_transform(cfg: DataConfig):
    """MAE's fine-tuning training transform (util/datasets.py build_transform): timm's create_transform with
    RandomResizedCrop (bicubic, area `data.scale`, aspect `data.ratio`: the fine-tuning recipes set timm's
    (0.08, 1) and (3/4, 4/3)), flip with probability `data.hflip`, RandAugment `data.auto_augment` ('' for none),
    random erasing `data.reprob` in `data.remode` mode `data.recount` times, no colour jitter, the data's
    normalization."""
    from timm.data import create_transform

    keep_timm_posterize_working()

    return create_transform(input_size=cfg.img_size, is_training=True, scale=tuple(cfg.scale),
                            ratio=tuple(cfg.ratio), hflip=cfg.hflip, color_jitter=None,
                            auto_augment=cfg.auto_augment or None, interpolation="bicubic", re_prob=cfg.reprob,
                            re_mode=cfg.remode, re_count=cfg.recount, mean=tuple(cfg.mean), std=tuple(cfg.std))


def seeded(transform, image, seed: int) -> torch.Tensor:
    """`transform(image)` with Python's, NumPy's and torch's global generators seeded by `seed` and restored after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        return transform(image)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def validation_source(cfg: DataConfig, classes: list[str]):
    """The labelled images `data.val` names: a folder (its classes among the training's) or the built-in set."""
    if cfg.val == SYNTHETIC_VALIDATION:
        from .synthetic import LabelledSyntheticImages

        return LabelledSyntheticImages(cfg.synthetic_val_images, len(classes), cfg.seed + 1, cfg.synthetic_size)
    if not Path(cfg.val).is_dir():
        raise FileNotFoundError(f"--val {cfg.val!r}: no such folder (a labelled ImageFolder tree is needed)")
    return LabelledFiles(cfg.val, classes)


class EvaluatedImages(torch.utils.data.Dataset):
    """(image, label) of a labelled source through the evaluation transform."""

    def __init__(self, source, transform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.transform(self.source.load(index)), self.source.labels[index]


def validation_loader(cfg: DataConfig, classes: list[str], rank: int, world_size: int, batch_size: int):
    """This process's share of the validation images — images rank, rank + world, …: each counted once, no
    padding — through MAE's evaluation transform (resize to size / 0.875 up to 224 px, else to the size; centre
    crop)."""
    from torch.utils.data import DataLoader, Subset

    from fastmim.eval.features import eval_transform

    from . import usable_workers

    source = validation_source(cfg, classes)
    crop = 224 / 256 if cfg.img_size <= 224 else 1.0
    data = EvaluatedImages(source, eval_transform(cfg.img_size, cfg.mean, cfg.std, crop))
    share = Subset(data, range(rank, len(data), world_size))
    return DataLoader(share, batch_size=batch_size, shuffle=False, num_workers=usable_workers(cfg.workers),
                      generator=torch.Generator().manual_seed(0)), len(data)
