import math

import pytest
import torch
from PIL import Image
from torchvision import transforms

from fastmim.data.augment import augment, crop_params
from fastmim.data.base import IMAGENET_MEAN, IMAGENET_STD
from fastmim.data.synthetic import SyntheticImages


@pytest.mark.parametrize("size,scale", [((80, 60), (0.2, 1.0)), ((30, 200), (0.08, 1.0)), ((64, 64), (0.9, 1.0))])
def test_equals_torchvision_official_augmentation(size, scale):
    """With torch's global RNG seeded like our generator, torchvision's MaskAlign transform gives the same tensor."""
    image = SyntheticImages(1, size=256).load(0).resize(size)
    official = transforms.Compose([
        transforms.RandomResizedCrop(32, scale=scale, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for seed in range(6):
        torch.manual_seed(seed)
        expected = official(image)
        ours = augment(image, 32, scale, (3 / 4, 4 / 3), 0.5, IMAGENET_MEAN, IMAGENET_STD,
                       torch.Generator().manual_seed(seed))
        assert torch.equal(ours, expected), seed


def test_crop_areas_and_aspects_within_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        top, left, h, w = crop_params(500, 375, (0.2, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.2 * 0.95 <= h * w / (500 * 375) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_flip_probability_and_global_rng_untouched():
    image = Image.new("RGB", (40, 40))
    before = torch.get_rng_state()
    augment(image, 16, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, (0, 0, 0), (1, 1, 1), torch.Generator().manual_seed(1))
    assert torch.equal(before, torch.get_rng_state())
    left_half_white = Image.new("RGB", (40, 40))
    left_half_white.paste((255, 255, 255), (0, 0, 20, 40))
    flips = 0
    for seed in range(200):
        x = augment(left_half_white, 16, (1.0, 1.0), (1.0, 1.0), 0.3, (0, 0, 0), (1, 1, 1),
                    torch.Generator().manual_seed(seed))
        flips += bool(x[:, :, -1].mean() > x[:, :, 0].mean())
    assert abs(flips / 200 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 200)


def test_color_jitter_scales_brightness_within_its_range_and_is_off_by_default():
    """On a flat grey image contrast and saturation change nothing, so each output is the grey times the
    brightness factor ~ U(0.6, 1.4); without jitter the augmentation draws nothing more (its output is as before)."""
    grey = Image.new("RGB", (48, 48), (100, 100, 100))
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def run(seed, jitter):
        return augment(grey, 16, (0.5, 1.0), (0.75, 1.33), 0.5, mean, std, torch.Generator().manual_seed(seed), jitter)

    plain = run(0, 0.0)
    torch.testing.assert_close(plain, torch.full_like(plain, 100 / 255), atol=1 / 255, rtol=0)
    levels = torch.tensor([run(seed, 0.4).mean().item() * 255 / 100 for seed in range(60)])
    assert levels.min() >= 0.6 - 0.02 and levels.max() <= 1.4 + 0.02
    assert levels.min() < 0.75 and levels.max() > 1.25 and levels.std() > 0.15  # a spread, not a fixed factor
