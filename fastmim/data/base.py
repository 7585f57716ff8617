"""The interface every input pipeline offers the trainer (torchvision, DALI, synthetic).

The trainer only ever does:

    loader = build_loader(cfg, rank, world_size, device)   # fastmim.data.build_loader
    loader.set_epoch(epoch)
    for images in loader:            # [B, 3, H, W] float, normalized with cfg.mean/cfg.std
        ...
    state = loader.state_dict()      # position in the epoch, for exact resume
    loader.load_state_dict(state)    # before iterating: continue with the same order and augmentation
    loader.skipped                   # images skipped so far because they could not be decoded
    loader.num_images                # images found (all ranks together)
    loader.backend, loader.workers   # the pipeline chosen (dali/torchvision/synthetic) and its workers/threads
    loader.classes                   # class names of labelled data (data.labels), else []; batches are then
                                     # (images, labels)
    len(loader)                      # steps (batches) per epoch for this rank
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch

from fastmim.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported)
from fastmim.data_config import DataConfig  # noqa: F401  (re-exported)


class ImageLoader(Protocol):
    skipped: int
    num_images: int
    backend: str
    workers: int
    classes: list

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[torch.Tensor]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
