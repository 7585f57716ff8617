"""MR-MAE: loss, every term and the gradients equal a direct transcription of its definition (MAE's computation
from models_mae.py, plus per teacher the mean squared error between a linear head on the encoder's final-norm
output at the CLS and kept tokens and the teacher's last block output at the same rows, LayerNorm-normalized
without affine), for one and two teachers and for random and attention ("focused mimicking") masks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastmim.methods.configs import MRMAEConfig
from fastmim.methods.mrmae import MRMAE
from tests.conftest import TINY_IMAGE

from .official_mae import mae_forward

TINY = dict(student="tiny", student_kwargs=dict(embed_dim=64, depth=3, num_heads=4),
            decoder_dim=32, decoder_depth=2, decoder_heads=4, teacher_kwargs=dict(depth=3))
TEACHERS = {"one": ("vit_tiny_patch16_224",), "two": ("vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2")}


def teacher_tokens(teacher, images, depth=None):
    """timm's forward through `depth` blocks (all by default): [B, prefix + N, D]."""
    m = teacher.model
    x = m.norm_pre(m._pos_embed(m.patch_embed(teacher.prepare(images))))
    for blk in m.blocks[:depth]:
        x = blk(x)
    return x


def last_level(teacher, images):
    """The last block's output at the CLS token and the patches (register tokens dropped)."""
    x = teacher_tokens(teacher, images)
    return torch.cat([x[:, :1], x[:, teacher.num_prefix:]], dim=1).float()


def cls_importance(teacher, images):
    """Softmax(q_cls·Kᵀ/√d) of the last block over all keys, averaged over heads, prefix columns dropped."""
    blk = teacher.model.blocks[-1]
    y = blk.norm1(teacher_tokens(teacher, images, depth=len(teacher.model.blocks) - 1))
    b, t, d = y.shape
    heads = blk.attn.num_heads
    q, k, _ = blk.attn.qkv(y).reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    scores = (q[:, :, :1] @ k.transpose(-2, -1)) * (d // heads) ** -0.5
    return scores.softmax(dim=-1).mean(dim=1)[:, 0, teacher.num_prefix:]


def noise_for(method, images, mode):
    """What models_mae's masking must be given to keep the patches MR-MAE keeps: uniform noise (random), or
    minus the Gumbel-perturbed log-importance of the first teacher (attention: its top V are kept)."""
    uniform = torch.rand(images.shape[0], method.student.num_patches)
    if mode == "random":
        return uniform
    with torch.no_grad():
        importance = cls_importance(method.teachers[0], images)
    return -(importance.log() - torch.log(-torch.log(uniform)))


def expected_loss(method, images, noise):
    pixel, latent, ids_shuffle = mae_forward(method, images, noise)
    kept = ids_shuffle[:, :latent.shape[1] - 1]
    rows = torch.cat([torch.zeros_like(kept[:, :1]), kept + 1], dim=1)
    terms, total = {"pixel": pixel}, pixel
    for name, head, teacher, weight in zip(method.cfg.teachers, method.mimic_heads, method.teachers,
                                           method.cfg.mimic_weights * len(method.teachers)):
        with torch.no_grad():
            feats = last_level(teacher, images)
        target = feats.gather(1, rows[..., None].expand(-1, -1, feats.shape[-1]))
        target = F.layer_norm(target, target.shape[-1:])  # no affine, eps 1e-5
        pred = F.linear(latent, head.weight, head.bias)
        terms[f"mimic_{name}"] = ((pred - target) ** 2).mean()
        total = total + weight * terms[f"mimic_{name}"]
    return total, terms


@pytest.mark.parametrize("mask_mode", ["random", "attention"])
@pytest.mark.parametrize("teachers", TEACHERS.values(), ids=TEACHERS.keys())
def test_loss_terms_and_gradients_equal_the_definition(teachers, mask_mode):
    torch.manual_seed(0)
    method = MRMAE(MRMAEConfig(**TINY, teachers=teachers, teacher_weights=("random",), mask_mode=mask_mode,
                               mimic_weights=(0.7,) if len(teachers) == 1 else (0.7, 1.3)), TINY_IMAGE)
    images = torch.randn(3, 3, 64, 64)
    params = [p for p in method.parameters() if p.requires_grad]
    torch.manual_seed(1)
    out = method(images)
    grads = torch.autograd.grad(out.loss, params)
    torch.manual_seed(1)
    expected, terms = expected_loss(method, images, noise_for(method, images, mask_mode))
    expected_grads = torch.autograd.grad(expected, params)
    assert set(out.terms) == set(terms) == {"pixel", *(f"mimic_{t}" for t in teachers)}
    for name in terms:
        torch.testing.assert_close(out.terms[name], terms[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(grads, expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_teachers_are_frozen_and_outside_the_state_dict():
    method = MRMAE(MRMAEConfig(**TINY, teachers=TEACHERS["two"], teacher_weights=("random", "random")), TINY_IMAGE)
    assert len(method.teachers) == 2 and not any(k.startswith("teacher") for k in method.state_dict())
    assert all(not p.requires_grad for t in method.teachers for p in t.parameters())
    method.to(torch.float64)
    assert all(next(t.parameters()).dtype == torch.float64 for t in method.teachers)


@pytest.mark.parametrize("field,value,message", [
    ("teachers", (), "one or two teachers"), ("teachers", ("a", "b", "c"), "one or two teachers"),
    ("mimic_weights", (1.0, 2.0, 3.0), "mimic_weights must have one entry per teacher"),
    ("mimic_loss", "huber", "mimic_loss must be one of"), ("mask_mode", "block", "mask_mode must be one of"),
])
def test_bad_options_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        MRMAE(MRMAEConfig(**{**TINY, "teachers": TEACHERS["one"], "teacher_weights": ("random",), field: value}),
              TINY_IMAGE)
