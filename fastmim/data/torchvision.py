"""The torchvision-style loader: a torch DataLoader over an image source (files or the synthetic set).

Batches are [B, 3, H, W] float32 on the CPU (pinned when asked for and training on CUDA). Images that cannot
be decoded are dropped from their batch (which is then smaller), reported with a warning naming the file and
counted in `loader.skipped`; the workers hand the failures back with the batch, so the warning and the count
happen in the main process whatever the number of workers. A batch in which every image fails raises.
"""
from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import augment
from .base import DataConfig
from .labelled import finetune_transform, seeded
from .sampler import ShardedBatchSampler, sample_seed


class UnreadableImageWarning(UserWarning):
    pass


class AugmentedImages(Dataset):
    """Item (epoch, index): image `index` of the source with the augmentation seeded by (seed, epoch, index) —
    pretraining's (augment.py) or fine-tuning's (timm's, labelled.py) — as (tensor or (tensor, label), None), or
    (None, (file, reason)) when it cannot be decoded."""

    def __init__(self, source, cfg: DataConfig):
        self.source, self.cfg = source, cfg
        self.labelled = cfg.labels
        self.finetune = finetune_transform(cfg) if cfg.augmentation == "finetune" else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        epoch, index = key
        try:
            image = self.source.load(index)
        except Exception as error:  # any decoder failure (truncated, garbage, unsupported) skips the image
            return None, (self.source.describe(index), f"{type(error).__name__}: {error}")
        tensor = self.transformed(image, sample_seed(self.cfg.seed, epoch, index))
        return ((tensor, self.source.labels[index]) if self.labelled else tensor), None

    def transformed(self, image, seed: int) -> torch.Tensor:
        if self.finetune is not None:
            return seeded(self.finetune, image, seed)
        g = torch.Generator()
        g.manual_seed(seed)
        cfg = self.cfg
        return augment(image, cfg.img_size, cfg.scale, cfg.ratio, cfg.hflip, cfg.mean, cfg.std, g, cfg.color_jitter)


def collate(items):
    """(images [b, 3, H, W] — or (images, labels [b]) for labelled items — or None, [(file, reason) of the failed
    ones])."""
    kept = [item for item, _ in items if item is not None]
    failures = [failure for _, failure in items if failure is not None]
    if not kept:
        return None, failures
    if isinstance(kept[0], tuple):
        return (torch.stack([image for image, _ in kept]), torch.tensor([label for _, label in kept])), failures
    return torch.stack(kept), failures


class TorchvisionLoader:
    """An ImageLoader (fastmim.data.base) over `source`, an object with __len__, load(i) and describe(i)."""

    def __init__(self, source, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        if cfg.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {cfg.workers}")
        self.cfg = cfg
        self.num_images = len(source)
        self.classes = list(getattr(source, "classes", [])) if cfg.labels else []
        self.batches = ShardedBatchSampler(len(source), cfg.batch_size, rank, world_size, cfg.seed)
        pin = bool(cfg.pin_memory) and torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.loader = DataLoader(
            AugmentedImages(source, cfg), batch_sampler=self.batches, num_workers=cfg.workers,
            collate_fn=collate, pin_memory=pin, persistent_workers=cfg.workers > 0,
            generator=torch.Generator(),  # the workers' base seed must not draw from the trainer's global RNG
        )
        self.skipped = 0
        self.epoch = 0
        self._resume_at = 0  # first batch of the next iteration (set by load_state_dict, used once)
        self._position = 0   # batches of self.epoch handed out so far

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._resume_at = self._position = 0
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self._position}

    def load_state_dict(self, state: dict) -> None:
        done = int(state["batches_done"])
        if not 0 <= done <= len(self):
            raise ValueError(f"loader state {state} is outside an epoch of {len(self)} batches")
        self.epoch, self._resume_at, self._position = int(state["epoch"]), done, done

    def __iter__(self):
        epoch, start = self.epoch, self._resume_at
        self._resume_at, self._position = 0, start
        return self._iterate(epoch, start)

    def _iterate(self, epoch: int, start: int):
        self.batches.epoch, self.batches.start = epoch, start
        for images, failures in self.loader:
            self._position += 1
            for name, reason in failures:
                warnings.warn(f"skipped unreadable image {name}: {reason}", UnreadableImageWarning, stacklevel=2)
            self.skipped += len(failures)
            if images is None:
                raise RuntimeError(f"every image of batch {self._position - 1} of epoch {epoch} failed to decode: "
                                   f"{', '.join(name for name, _ in failures)}; remove these files or use a "
                                   "larger batch")
            yield images
