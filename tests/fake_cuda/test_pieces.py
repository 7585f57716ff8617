"""The pieces around the step, on fake CUDA tensors (tests/fake_cuda/dry_run.py; what stays for a GPU is listed in
test_step.py): the masks, drawn on the device without a host synchronization in both kernel modes, the choice of
kernels for a CUDA device with no GPU behind it, and the evaluator's feature extraction at ViT-B shapes."""
from __future__ import annotations

import pytest
import torch

from fastmim import ops
from fastmim.eval.features import POOLINGS, extract, pool, tokens
from fastmim.methods import masks
from fastmim.ops import _backend, _extension

from .dry_run import DEVICE, HostGuard, build_fake, fake_mode, vit_b_config

BATCH, GRID = 128, 14


@pytest.fixture(params=["fused", "reference"])
def kernels(request):
    previous = ops.kernels_mode()
    ops.set_kernels(request.param)
    yield request.param
    ops.set_kernels(previous)


def check_mask(mask: masks.Mask, kept: int) -> None:
    assert mask.ids_keep.shape == (BATCH, kept) and mask.ids_masked.shape == (BATCH, GRID * GRID - kept)
    for ids in (mask.ids_keep, mask.ids_masked):
        assert (ids.device, ids.dtype) == (DEVICE, torch.int64)


def test_the_masks_are_drawn_on_the_device(kernels):
    with fake_mode(), HostGuard() as guard:
        importance = torch.rand(BATCH, GRID * GRID, device=DEVICE).softmax(dim=-1)
        check_mask(masks.draw_mask("random", 0.75, BATCH, GRID * GRID, DEVICE), 49)
        check_mask(masks.draw_mask("attention", 0.7, BATCH, GRID * GRID, DEVICE, importance), 58)
        check_mask(masks.draw_mask("block", 0.4, BATCH, GRID * GRID, DEVICE), GRID * GRID - 78)
        kept, masked = ops.block_mask(BATCH, GRID, GRID, 78, "cuda")  # a device given by name, without an index
        assert (kept.shape, masked.shape, masked.device) == ((BATCH, 118), (BATCH, 78), DEVICE)
    assert ("fastmim.block_mask" in guard.ops) == (kernels == "fused")


def test_a_cuda_device_without_a_gpu_takes_the_kernels_without_asking_it():
    """Fake CUDA tensors on this machine: nothing to ask (kernel_version is 0, no query is made), and the library's
    CUDA kernels are what `auto` and `fused` take, so that the dry run reaches their fake implementations."""
    assert not torch.cuda.is_available() and _extension.has_cuda_kernels()
    assert _extension.kernel_version(DEVICE) == 0 and not _extension.has_gpu(DEVICE)
    assert _extension.runs_on(DEVICE)
    previous = ops.kernels_mode()
    try:
        for mode in ("auto", "fused"):
            ops.set_kernels(mode)
            assert _backend.implementation("align_loss", DEVICE) is ops.fused_ops().align_loss
    finally:
        ops.set_kernels(previous)


def test_the_evaluators_features_at_vit_b():
    """k-NN and linear-probe features (fastmim.eval.features): the student's tokens after its final norm, pooled
    on the device; `extract` brings each batch's features back to the host by design, once per batch."""
    mode = fake_mode()
    student = build_fake(vit_b_config("maskalign"), mode).student
    with mode:
        images = torch.empty(16, 3, 224, 224, device=DEVICE)
        with HostGuard():
            for pooling in POOLINGS:
                features = pool(tokens(student, images), pooling)
                assert (features.shape, features.device) == ((16, 768), DEVICE)
        loader = [(torch.empty(16, 3, 224, 224), torch.zeros(16, dtype=torch.long)) for _ in range(2)]  # host batches
        features, labels = extract(student, loader, "mean", DEVICE)
    assert (features.shape, features.dtype, features.device.type) == ((32, 768), torch.float32, "cpu")
    assert labels.shape == (32,) and student.training  # extract restores the mode it found
