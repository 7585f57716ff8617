"""Input pipelines behind one interface (fastmim.data.base.ImageLoader): DALI, torchvision, synthetic.

    loader = build_loader(cfg, rank, world_size, device)
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import torch

from .base import IMAGENET_MEAN, IMAGENET_STD, DataConfig, ImageLoader

BACKENDS = ("auto", "dali", "torchvision", "synthetic")
DALI_PACKAGES = "nvidia-dali-cuda130 (CUDA 13) or nvidia-dali-cuda120 (CUDA 12)"

__all__ = ["BACKENDS", "DataConfig", "IMAGENET_MEAN", "IMAGENET_STD", "ImageLoader", "build_loader",
           "dali_available", "resolve_backend"]


class DaliNotInstalledError(ImportError, ValueError):
    """An ImportError that command lines catching ValueError also report as a plain usage error."""


def dali_available() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(cfg: DataConfig) -> str:
    """The pipeline `cfg` asks for: synthetic when asked or without a path; auto means DALI when installed and
    the data is unlabelled with pretraining's augmentation, torchvision otherwise."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown data backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
    if cfg.backend == "synthetic" or cfg.path is None:
        return "synthetic"
    if cfg.backend == "dali" and not dali_available():
        raise DaliNotInstalledError(f"data backend 'dali' needs NVIDIA DALI: pip install {DALI_PACKAGES}")
    if cfg.backend == "auto":  # DALI when installed and when it can do what is asked (fine-tuning's it cannot)
        return "dali" if dali_available() and not cfg.labels and cfg.augmentation == "pretrain" else "torchvision"
    return cfg.backend


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as a container or a scheduler sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def usable_workers(requested: int) -> int:
    """Worker processes (DALI: threads) never above the cores available: more only compete for them (and
    PyTorch's DataLoader warns about it)."""
    return min(requested, available_cores())


def build_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> ImageLoader:
    """The loader `cfg` describes, its `backend` ('dali', 'torchvision' or 'synthetic') and `workers` (what it
    runs with: data.workers, at most the cores available) set."""
    backend = resolve_backend(cfg)
    loader = _build(dataclasses.replace(cfg, workers=usable_workers(cfg.workers)), backend, rank, world_size, device)
    loader.backend, loader.workers = backend, usable_workers(cfg.workers)
    loader.classes = list(getattr(loader, "classes", []))
    return loader


def _build(cfg: DataConfig, backend: str, rank: int, world_size: int, device) -> ImageLoader:
    if backend != "synthetic":
        from .folder import check_exists

        check_exists(cfg.path)  # a wrong path is reported as such whichever backend would read it
    if backend == "dali":
        if cfg.labels or cfg.augmentation != "pretrain":
            raise ValueError("fine-tuning's labelled batches and its augmentation (timm's RandAugment and random "
                             "erasing) are not built for DALI: set data.backend to torchvision or auto")
        from .dali import DaliLoader

        return DaliLoader(cfg, rank, world_size, device)
    from .torchvision import TorchvisionLoader

    return TorchvisionLoader(_source(cfg, backend), cfg, rank, world_size, device)


def _source(cfg: DataConfig, backend: str):
    """The images the torchvision loader reads: the synthetic set or files; labelled ones when data.labels."""
    if backend == "synthetic":
        from .synthetic import LabelledSyntheticImages, SyntheticImages

        if cfg.labels:
            return LabelledSyntheticImages(cfg.synthetic_images, cfg.synthetic_classes, cfg.seed, cfg.synthetic_size)
        return SyntheticImages(cfg.synthetic_images, cfg.seed, cfg.synthetic_size)
    if cfg.labels:
        from .labelled import LabelledFiles

        return LabelledFiles(cfg.path)
    from .folder import ImageFiles, find_images

    return ImageFiles(find_images(cfg.path))
