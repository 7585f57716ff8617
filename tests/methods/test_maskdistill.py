"""MaskDistill: loss and gradients equal a direct transcription of its definition — BEiT v2's dense student (every
patch embedded by the convolution, the masked ones replaced by the mask token, then the position embedding,
the blocks with layer scale, the final norm), one linear head on the masked positions' outputs, against the
teacher's full forward at the masked patch rows, LayerNorm-normalized without affine, smooth-L1 with beta (no
×2) averaged over the masked tokens and channels — for beta 1 and 2, with CLIP-style and register-token
teachers; the block mask it draws; and its options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastmim.methods.configs import MaskDistillConfig
from fastmim.methods.maskdistill import MaskDistill
from fastmim.data_config import ImageSpec
from tests.conftest import TINY_IMAGE

from .test_mrmae import teacher_tokens

TINY = dict(student="tiny", student_kwargs=dict(embed_dim=64, depth=3, num_heads=4),
            drop_path=0.0, teacher_weights="random", teacher_kwargs=dict(depth=3))
TEACHERS = ("vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2")


def dense_student(student, images, is_masked):
    """BEiT v2's forward: conv patch embedding of every patch, mask token where masked, + position embedding,
    CLS first, the blocks (x + ls1(attn(norm1 x)), x + ls2(mlp(norm2 x))), the final norm."""
    x = F.conv2d(images, student.patch_embed.proj.weight, student.patch_embed.proj.bias,
                 stride=student.patch_size).flatten(2).transpose(1, 2)
    w = is_masked[..., None].to(x.dtype)
    x = x * (1 - w) + student.mask_token * w + student.pos_embed[:, 1:]
    x = torch.cat([(student.cls_token + student.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
    for blk in student.blocks:
        x = x + blk.ls1.gamma * blk.attn.proj(attention(blk, blk.norm1(x)))
        x = x + blk.ls2.gamma * blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))
    return student.norm(x)


def attention(blk, y):
    b, t, d = y.shape
    heads = blk.attn.num_heads
    q, k, v = blk.attn.qkv(y).reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, t, d)


def smooth_l1(x, target, beta):
    diff = (x - target).abs()
    return torch.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta).mean()


def expected_loss(method, images, ids_masked, beta):
    is_masked = torch.zeros(images.shape[0], method.student.num_patches, dtype=torch.bool)
    is_masked.scatter_(1, ids_masked, True)
    out = dense_student(method.student, images, is_masked)[:, 1:]
    at_masked = out.gather(1, ids_masked[..., None].expand(-1, -1, out.shape[-1]))
    pred = F.linear(at_masked, method.head.weight, method.head.bias)
    teacher = method.teachers[0]
    with torch.no_grad():
        patches = teacher_tokens(teacher, images)[:, teacher.num_prefix:].float()  # the full forward
    target = patches.gather(1, ids_masked[..., None].expand(-1, -1, patches.shape[-1]))
    return smooth_l1(pred, F.layer_norm(target, target.shape[-1:]), beta)


@pytest.mark.parametrize("teacher", TEACHERS)
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_loss_and_gradients_equal_the_definition(beta, teacher):
    torch.manual_seed(0)
    method = MaskDistill(MaskDistillConfig(**TINY, teacher=teacher, beta=beta, init_values=0.1), TINY_IMAGE)
    for blk in method.student.blocks:  # layer scales away from their init, so a missing one shows
        blk.ls1.gamma.data.uniform_(0.5, 1.5)
        blk.ls2.gamma.data.uniform_(0.5, 1.5)
    images = torch.randn(3, 3, 64, 64)
    params = [p for p in method.parameters() if p.requires_grad]
    frozen = method.frozen_pass(images)
    out = method.trained_pass(images, frozen)
    grads = torch.autograd.grad(out.loss, params)
    expected = expected_loss(method, images, frozen.mask.ids_masked, beta)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    assert set(out.terms) == {"distill"} and out.mask.ids_masked.shape == (3, 6)  # int(16 · 0.4)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)
    for (name, _), ours, theirs in zip([(n, p) for n, p in method.named_parameters() if p.requires_grad], grads,
                                      expected_grads):
        assert theirs is not None, name
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_the_mask_token_and_the_layer_scale_are_trained_and_not_exported_as_such():
    method = MaskDistill(MaskDistillConfig(**TINY, teacher=TEACHERS[0]), TINY_IMAGE)
    names = dict(method.student.named_parameters())
    assert names["mask_token"].requires_grad and "blocks.0.ls1.gamma" in names and "blocks.2.ls2.gamma" in names
    torch.testing.assert_close(names["blocks.0.ls1.gamma"].detach(), torch.full((64,), 0.1))
    groups = method.param_groups(0.05)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(names["cls_token"]) in no_decay and id(names["blocks.0.ls1.gamma"]) in no_decay
    assert id(names["blocks.0.attn.qkv.weight"]) not in no_decay


def test_masks_are_block_masks_drawn_afresh_each_step():
    method = MaskDistill(MaskDistillConfig(**TINY, teacher=TEACHERS[0]), ImageSpec(224))
    images = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        a, b = method.frozen_pass(images).mask, method.frozen_pass(images).mask
    assert a.ids_masked.shape == (4, 78) and a.ids_keep.shape == (4, 118)
    assert not torch.equal(a.ids_masked, b.ids_masked)


@pytest.mark.parametrize("field,value,message", [
    ("loss", "huber", "loss must be one of"), ("beta", -1.0, "beta must be non-negative"),
    ("mask_ratio", 0.0, "mask_ratio must be in"), ("mask_ratio", 1.0, "mask_ratio must be in"),
])
def test_bad_options_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        MaskDistill(MaskDistillConfig(**{**TINY, "teacher": TEACHERS[0], field: value}), TINY_IMAGE)
