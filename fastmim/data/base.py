"""The interface every input pipeline offers the trainer (torchvision, DALI, synthetic).

The trainer only ever does:

    loader = build_loader(cfg, rank, world_size, device)   # fastmim.data.build_loader
    loader.set_epoch(epoch)
    for images in loader:            # [B, 3, H, W] float, normalized with cfg.mean/cfg.std
        ...
    state = loader.state_dict()      # position in the epoch, for exact resume
    loader.load_state_dict(state)    # before iterating: continue with the same order and augmentation
    loader.skipped                   # images skipped so far because they could not be decoded
    len(loader)                      # steps (batches) per epoch for this rank
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from fastmim.constants import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class DataConfig:
    path: str | None = None             # ImageFolder root or list file; None means the synthetic set
    backend: str = "auto"               # auto/dali/torchvision/synthetic
    img_size: int = 224
    batch_size: int = 128               # per process
    workers: int = 8                    # DataLoader workers / DALI CPU threads (at least 1 for DALI)
    scale: tuple = (0.2, 1.0)           # RandomResizedCrop area range
    ratio: tuple = (3 / 4, 4 / 3)       # RandomResizedCrop aspect range
    hflip: float = 0.5
    color_jitter: float = 0.0           # brightness, contrast and saturation factors ~ U(1 − c, 1 + c); 0: none
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    synthetic_images: int = 1024        # size of the built-in synthetic set
    synthetic_size: int = 256           # side of the synthetic source pictures (before the crop)
    seed: int = 0
    pin_memory: bool = True
    dali_hw_decoder_load: float = 0.65  # share of JPEG decoding on the GPU's hardware decoder (A100/H100)
    dali_dtype: str = "float32"         # DALI output on the GPU: float32 / float16 (DALI has no bfloat16; CPU: float32)
    dali_prefetch: int = 2              # DALI prefetch queue depth (batches in flight)


class ImageLoader(Protocol):
    skipped: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[torch.Tensor]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
