"""The fine-tuning protocol's pieces are timm's, called with MAE's arguments (main_finetune.py and
util/datasets.py build_transform): the composed training transform, the Mixup object's settings, the losses,
the classifier's pooling and head initialization."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torchvision import transforms

from fastmim.data.labelled import finetune_transform
from fastmim.methods.finetune import Finetune
from fastmim.recipes import recipe


def test_the_training_transform_is_timms_create_transform_with_maes_arguments():
    cfg = recipe("finetune_mae_vit_base").data
    composed = finetune_transform(cfg).transforms
    kinds = [type(t) for t in composed]
    assert kinds[:3] == [RandomResizedCropAndInterpolation, transforms.RandomHorizontalFlip, RandAugment]
    crop, flip, augment = composed[:3]
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0) and "BICUBIC" in str(crop.interpolation).upper()
    assert flip.p == 0.5
    assert augment.num_layers == 2 and {op.magnitude for op in augment.ops} == {9}
    assert {op.magnitude_std for op in augment.ops} == {0.5} and len(augment.ops) == 15  # rand-m9-mstd0.5-inc1
    erasing = composed[-1]
    assert isinstance(erasing, RandomErasing) and erasing.probability == 0.25 and erasing.mode == "pixel"
    assert (erasing.min_count, erasing.max_count) == (1, 1)
    assert crop.ratio == (3 / 4, 4 / 3)
    normalize = next(t for t in composed if isinstance(t, transforms.Normalize))
    assert torch.allclose(torch.as_tensor(normalize.mean), torch.tensor([0.485, 0.456, 0.406]))
    assert not any(isinstance(t, transforms.ColorJitter) for t in composed)  # MAE passes color_jitter=None


def small_classifier(**method):
    cfg = recipe("demo_finetune")
    cfg.method = dataclasses.replace(cfg.method, **method)
    return Finetune(cfg.method, dataclasses.replace(cfg.data.image, classes=("a", "b", "c")))


def test_mixup_cutmix_and_the_losses_are_timms_with_maes_settings():
    cfg = recipe("finetune_maskalign_vit_base").method
    assert (cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob, cfg.mixup_mode, cfg.smoothing) == (
        0.8, 1.0, 1.0, 0.5, "batch", 0.1)
    method = small_classifier(mixup=0.8, cutmix=1.0)  # the demo turns them off
    m = method.mixup
    assert (m.mixup_alpha, m.cutmix_alpha, m.mix_prob, m.switch_prob, m.mode, m.label_smoothing) == (
        0.8, 1.0, 1.0, 0.5, "batch", 0.1)
    assert m.num_classes == 3 and m.cutmix_minmax is None and m.correct_lam
    assert isinstance(method.criterion, SoftTargetCrossEntropy)
    smoothing_only = small_classifier(mixup=0.0, cutmix=0.0)
    assert smoothing_only.mixup is None and isinstance(smoothing_only.criterion, LabelSmoothingCrossEntropy)
    assert smoothing_only.criterion.smoothing == 0.1
    assert isinstance(small_classifier(mixup=0.0, cutmix=0.0, smoothing=0.0).criterion, torch.nn.CrossEntropyLoss)


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_the_classifier_pools_as_asked_and_its_head_starts_as_maes(pool):
    torch.manual_seed(0)
    model = small_classifier(global_pool=pool).student
    assert model.global_pool == pool
    assert isinstance(model.fc_norm, torch.nn.LayerNorm) == (pool == "avg")
    assert isinstance(model.norm, torch.nn.Identity) == (pool == "avg")
    assert 1e-5 < model.head.weight.std() < 3e-5  # trunc_normal(std=2e-5): its cut is at ±2, never reached
    assert torch.equal(model.head.bias, torch.zeros(3))


def test_recipes_hold_the_official_settings():
    expected = {"finetune_mae_vit_base": (100, 5e-4, 0.65, 0.1), "finetune_mae_vit_large": (50, 1e-3, 0.75, 0.2),
                "finetune_maskalign_vit_base": (100, 3e-4, 0.55, 0.2),
                "finetune_maskalign_vit_large": (50, 3e-4, 0.75, 0.4),
                "finetune_mrmae_vit_base": (100, 5e-4, 0.65, 0.1),
                "finetune_maskdistill_vit_base": (100, 5e-4, 0.65, 0.1)}
    for name, (epochs, base_lr, decay, drop_path) in expected.items():
        cfg = recipe(name)
        assert (cfg.train.epochs, cfg.optim.base_lr, cfg.method.layer_decay, cfg.method.drop_path) == (
            epochs, base_lr, decay, drop_path), name
        assert cfg.data.batch_size * 8 == 1024 and cfg.optim.betas == (0.9, 0.999) and cfg.optim.min_lr == 1e-6
        assert cfg.optim.warmup_epochs == 5 and cfg.optim.weight_decay == 0.05 and cfg.optim.clip_grad is None
