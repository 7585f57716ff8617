"""One MaskAlign training step with the fused kernels equals the step with the references: the loss and
every parameter gradient."""
from __future__ import annotations

import pytest
import torch

from fastmim import ops
from fastmim.methods.maskalign import MaskAlign, MaskAlignConfig

from tests.conftest import TINY_IMAGE
from .helpers import fused


def config(**overrides) -> MaskAlignConfig:
    params = dict(student="tiny", student_kwargs=dict(embed_dim=64, depth=4, num_heads=2),
                  teacher="vit_tiny_patch16_224", teacher_weights="random", teacher_kwargs=dict(depth=4),
                  fusion="linear", level_weights="top2")
    params.update(overrides)
    return MaskAlignConfig(**params)


def step(model: MaskAlign, images: torch.Tensor, kernels: str):
    ops.set_kernels(kernels)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same masks and drop-path draws for both runs
    out = model(images)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(fusion="sum", loss="cosine", target_norm="l2", mask_mode="random"),
    dict(fusion="simple", loss="l2", target_norm="batchnorm", level_weights="mean"),
    dict(head="mlp", loss="l1", target_norm="none"),
], ids=["default", "sum-cosine-l2", "simple-l2-batchnorm", "mlp-l1-none"])
def test_one_step_fused_equals_reference(overrides):
    fused()
    torch.manual_seed(0)
    model = MaskAlign(config(**overrides), TINY_IMAGE)
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    try:
        out_fused, grads_fused = step(model, images, "fused")
        out_ref, grads_ref = step(model, images, "reference")
    finally:
        ops.set_kernels("auto")
    assert torch.equal(out_fused.mask.ids_keep, out_ref.mask.ids_keep)
    torch.testing.assert_close(out_fused.loss, out_ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_fused.terms, out_ref.terms, rtol=1e-5, atol=1e-6)
    assert grads_fused.keys() == grads_ref.keys() and len(grads_ref) > 10
    for name in grads_ref:
        torch.testing.assert_close(grads_fused[name], grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)
