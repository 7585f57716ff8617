"""The `data` section of a run's configuration (fastmim.data builds the pipelines from it), and the image spec it
owns. No torch import: the command line reads configurations before anything heavy is loaded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastmim.config_values import Floats
from fastmim.constants import IMAGENET_MEAN, IMAGENET_STD

Triple = Annotated[tuple, Floats(3)]
Pair = Annotated[tuple, Floats(2)]


@dataclass(frozen=True)
class ImageSpec:
    """What the images a run trains on look like: `size`×`size` pixels, normalized per channel with `mean` and
    `std`. The `data` section owns it; a method receives it when it is built (its student's size, and what its
    teachers fold into their patch embedding to see pixels normalized their own way)."""
    size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    classes: tuple = ()                 # the class names when the data is labelled (fine-tuning), else none


@dataclass
class DataConfig:
    path: str | None = None             # ImageFolder root or list file; None means the synthetic set
    backend: Literal["auto", "dali", "torchvision", "synthetic"] = "auto"
    img_size: int = 224
    batch_size: int = 128               # per process
    workers: int = 8                    # DataLoader workers / DALI CPU threads (at least 1 for DALI)
    scale: Pair = (0.2, 1.0)            # RandomResizedCrop area range
    ratio: Pair = (3 / 4, 4 / 3)        # RandomResizedCrop aspect range
    hflip: float = 0.5
    color_jitter: float = 0.0           # brightness, contrast and saturation factors ~ U(1 − c, 1 + c); 0: none
    mean: Triple = IMAGENET_MEAN        # per channel, of pixels in [0, 1]
    std: Triple = IMAGENET_STD
    synthetic_images: int = 1024        # size of the built-in synthetic set
    synthetic_size: int = 256           # side of the synthetic source pictures (before the crop)
    seed: int = 0
    pin_memory: bool = True
    dali_hw_decoder_load: float = 0.65  # share of JPEG decoding on the GPU's hardware decoder (A100/H100)
    # DALI output on the GPU (DALI has no bfloat16; on the CPU always float32)
    dali_dtype: Literal["float32", "float16"] = "float32"
    dali_prefetch: int = 2              # DALI prefetch queue depth (batches in flight)
    # Fine-tuning: labelled batches (an ImageFolder tree, or the built-in labelled synthetic set), MAE's training
    # transform (timm's create_transform: RandAugment, random erasing) and a validation set.
    labels: bool = False                # batches are (images, labels); --data is read as an ImageFolder tree
    augmentation: Literal["pretrain", "finetune"] = "pretrain"
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # timm's RandAugment spec (finetune augmentation); "" for none
    reprob: float = 0.25                # random erasing probability (finetune augmentation)
    remode: Literal["pixel", "const", "rand"] = "pixel"
    recount: int = 1
    val: str | None = None              # labelled validation images: an ImageFolder tree, or "synthetic"
    val_batch_size: int = 256           # images per validation batch, per process
    synthetic_classes: int = 4          # classes of the built-in labelled synthetic set (with labels): 2..12
    synthetic_val_images: int = 256     # its validation images (data.val=synthetic)

    @property
    def image(self) -> ImageSpec:
        return ImageSpec(self.img_size, tuple(self.mean), tuple(self.std))
