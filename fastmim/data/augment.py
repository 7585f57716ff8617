"""The official MaskAlign augmentation, drawn from an explicit generator.

torchvision's RandomResizedCrop(size, scale, ratio, BICUBIC) + RandomHorizontalFlip(p) + ToTensor + Normalize,
with the same draws in the same order, but from a per-sample `torch.Generator` instead of torch's global RNG:
the global RNG belongs to the trainer (masks, drop path) and would also make the result depend on which
worker loads the sample. Seeding the global RNG with the same number gives torchvision's exact output.
"""
from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F


def crop_params(width: int, height: int, scale, ratio, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop; torchvision's RandomResizedCrop.get_params with `g`."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            left = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return top, left, h, w
    in_ratio = width / height  # ten misses: the largest centred crop within the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(image: Image.Image, strength: float, g: torch.Generator) -> Image.Image:
    """torchvision's ColorJitter(strength, strength, strength): brightness, contrast and saturation factors
    ~ U(1 − strength, 1 + strength), applied in a random order."""
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    factors = torch.empty(3).uniform_(max(0.0, 1 - strength), 1 + strength, generator=g).tolist()
    for i in torch.randperm(3, generator=g).tolist():
        image = adjust[i](image, factors[i])
    return image


def augment(image: Image.Image, size: int, scale, ratio, hflip: float, mean, std,
            g: torch.Generator, jitter: float = 0.0) -> torch.Tensor:
    """[3, size, size] float32, normalized with mean/std (and colour-jittered when jitter > 0)."""
    top, left, h, w = crop_params(image.width, image.height, scale, ratio, g)
    image = F.resized_crop(image, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
    if torch.rand(1, generator=g) < hflip:
        image = F.hflip(image)
    if jitter > 0:  # no draws otherwise: runs without jitter keep their exact augmentation
        image = color_jitter(image, jitter, g)
    return F.normalize(F.to_tensor(image), mean, std)
