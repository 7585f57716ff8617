"""The `data` section of a run's configuration (fastmim.data builds the pipelines from it). No torch import:
the command line reads configurations before anything heavy is loaded."""
from __future__ import annotations

from dataclasses import dataclass

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
