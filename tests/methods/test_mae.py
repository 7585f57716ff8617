"""MAE: loss and gradients equal facebookresearch/mae's models_mae.py computation (transcribed in
official_mae.py) on the same weights, images and noise, in float32 to 1e-5 relative, with norm_pix on and off;
the decoder's projection runs at the masked positions only; weight decay and export as MAE's."""
from __future__ import annotations

import pytest
import torch

from fastmim.methods.configs import MAEConfig
from fastmim.methods.mae import MAE, MAEFrozen
from fastmim.methods.masks import num_kept, split
from tests.conftest import TINY_IMAGE

from .official_mae import mae_forward

TINY = dict(student="tiny", student_kwargs=dict(embed_dim=64, depth=3, num_heads=4),
            decoder_dim=32, decoder_depth=2, decoder_heads=4)


def mask_from_noise(noise, ratio):
    """MAE's masking of this noise, as a fastmim Mask (kept and masked patches; their order does not matter)."""
    return split(noise.argsort(dim=1), num_kept(noise.shape[1], ratio))


def trained(method):
    return [p for p in method.parameters() if p.requires_grad]


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("kernels", ["fused", "reference"])
def test_loss_and_gradients_equal_models_mae(norm_pix, kernels):
    from fastmim import ops

    torch.manual_seed(0)
    method = MAE(MAEConfig(**TINY, norm_pix=norm_pix), TINY_IMAGE)
    with torch.no_grad():  # a trained-looking mask token and decoder bias, not MAE's zero-ish init
        method.decoder.mask_token.normal_()
        method.decoder.pred.bias.normal_()
    images = torch.randn(3, 3, 64, 64)
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(1))
    expected, _, _ = mae_forward(method, images, noise)
    expected_grads = torch.autograd.grad(expected, trained(method))
    ops.set_kernels(kernels)
    try:
        out = method.trained_pass(images, MAEFrozen(mask_from_noise(noise, method.cfg.mask_ratio)))
        grads = torch.autograd.grad(out.loss, trained(method))
    finally:
        ops.set_kernels("auto")
    assert out.terms == {"pixel": out.loss}
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=0)
    for ours, theirs in zip(grads, expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_the_mask_is_maes_and_changes_with_the_seed():
    method = MAE(MAEConfig(**TINY), TINY_IMAGE)
    images = torch.randn(2, 3, 64, 64)
    torch.manual_seed(5)
    mask = method.frozen_pass(images).mask
    torch.manual_seed(5)
    expected = mask_from_noise(torch.rand(2, 16), 0.75)  # MAE: noise = torch.rand(N, L)
    assert torch.equal(mask.ids_keep, expected.ids_keep) and mask.ids_keep.shape == (2, 4)
    assert not torch.equal(method.frozen_pass(images).mask.ids_keep, mask.ids_keep)


def test_decoder_projects_only_the_masked_positions():
    method = MAE(MAEConfig(**TINY), TINY_IMAGE)
    rows = []
    method.decoder.pred.register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    method(torch.randn(2, 3, 64, 64))
    assert rows == [torch.Size([2, 12, 32])]  # 12 masked of 16 patches, not 1 + 16 tokens


def test_weight_decay_exempts_only_biases_and_1d_tensors():
    method = MAE(MAEConfig(**TINY), TINY_IMAGE)
    decay, no_decay = method.param_groups(0.05)
    names = {id(p): n for n, p in method.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"student.cls_token", "decoder.mask_token", "decoder.embed.weight", "student.patch_embed.proj.weight"} <= decayed
    assert {"decoder.embed.bias", "student.norm.weight", "decoder.norm.bias"} <= exempt
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert "student.pos_embed" not in decayed | exempt and "decoder.pos_embed" not in decayed | exempt  # fixed
