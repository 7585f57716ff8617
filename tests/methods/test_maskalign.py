import math

import pytest
import torch

from fastmim.data_config import ImageSpec
from fastmim.methods.maskalign import MaskAlign
from fastmim.methods.maskalign_reference import MaskAlignReference
from tests.conftest import TINY_IMAGE, tiny_config

VARIANTS = [
    {},  # the defaults of the tiny config: linear fusion, linear heads, layernorm targets, smooth_l1, top2
    dict(fusion="sum"), dict(fusion="simple"),
    dict(head="norm_linear"), dict(head="mlp"), dict(head="mlp2"),
    dict(target_norm="l2"), dict(target_norm="batchnorm"), dict(target_norm="none"),
    dict(loss="l2"), dict(loss="l1"), dict(loss="cosine"),
    dict(level_weights="mean"), dict(level_weights="out"), dict(level_weights="linear_decay"),
    dict(level_weights="mid2"), dict(level_weights="top4"),
    dict(mask_mode="random"),
    dict(fusion="sum", student_kwargs=dict(embed_dim=64, depth=6, num_heads=2)),  # deeper student
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_loss_and_gradients_equal_the_official_computation(overrides):
    """Against MaskAlignReference: all teacher levels normalized over all tokens then gathered, all heads
    computed, stacked-einsum DA, weighted sum, conv-over-all-patches embedding, eager teacher attention."""
    torch.manual_seed(0)
    method = MaskAlign(tiny_config(**overrides), TINY_IMAGE)
    with torch.no_grad():  # make every DA weight matter, not just the identity-like init
        if method.mix is not None:
            method.mix.add_(torch.randn_like(method.mix) * 0.1)
    images = torch.randn(3, 3, 64, 64)
    out = method(images)
    grads = torch.autograd.grad(out.loss, [p for p in method.parameters() if p.requires_grad])
    reference = MaskAlignReference(method)
    expected = reference(images, mask=out.mask).loss
    expected_grads = torch.autograd.grad(expected, [p for p in method.parameters() if p.requires_grad])
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(grads, expected_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_only_supervised_levels_are_computed():
    method = MaskAlign(tiny_config(level_weights="mid1", fusion="simple"), TINY_IMAGE)  # mid1: level 2
    assert method.levels == [2] and method.head_weight.shape[0] == 1
    # blocks deeper than level 2 are never run, so they hold no trainable parameters (DDP needs none unused)
    assert not any(p.requires_grad for p in method.student.blocks[2:].parameters())
    out = method(torch.randn(2, 3, 64, 64))
    out.loss.backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)


def test_vit_base_student_with_clip_b16_teacher_on_cpu():
    torch.manual_seed(0)
    method = MaskAlign(tiny_config(student="base", student_kwargs={}, drop_path=0.1, teacher="clip_b16",
                                   teacher_kwargs={}, level_weights="top5"), ImageSpec(224))
    out = method(torch.randn(2, 3, 224, 224))
    assert out.mask.ids_keep.shape == (2, 58) and set(out.terms) == {f"level_{l}" for l in range(8, 13)}
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    assert method.student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert method.student.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.mix.grad.abs().sum() > 0 and method.head_weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_the_gpu_precision_setup_runs_on_the_cpu_too():
    """bf16 teacher weights under bf16 autocast (what the trainer does on CUDA): the same loss as fp32 within
    bf16's precision, and finite gradients (random masking: the same mask in both precisions)."""
    torch.manual_seed(0)
    method = MaskAlign(tiny_config(mask_mode="random"), TINY_IMAGE)
    images = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    expected = method(images)
    method.teacher.to(torch.bfloat16)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(images)
    assert torch.equal(out.mask.ids_keep, expected.mask.ids_keep)
    torch.testing.assert_close(out.loss, expected.loss.detach(), rtol=5e-2, atol=0)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.requires_grad)


def test_linear_fusion_needs_equal_depths():
    with pytest.raises(ValueError, match="fusion 'linear' needs equal depths"):
        MaskAlign(tiny_config(student_kwargs=dict(embed_dim=64, depth=6, num_heads=2)), TINY_IMAGE)


@pytest.mark.parametrize("field,value,message", [
    ("mask_ratio", 1.0, "mask_ratio must be in"), ("loss", "huber", "loss must be one of"),
    ("target_norm", "whiten", "target_norm must be one of"), ("fusion", "concat", "fusion must be one of"),
    ("head", "conv", "head must be one of"), ("level_weights", "top9", "K must be in 1..4"),
    ("patch_size", 12, "not divisible by patch_size"), ("teacher", "clip_b99", "known teachers: clip_b16"),
    ("attn_backend", "flash", "flash_attn"),
])
def test_bad_options_are_named(field, value, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        MaskAlign(tiny_config(**{field: value}), TINY_IMAGE)


def test_param_groups_exclude_biases_norms_tokens_and_da_weights():
    method = MaskAlign(tiny_config(), TINY_IMAGE)
    decay, no_decay = method.param_groups(0.05)
    names = {id(p): n for n, p in method.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"mix", "student.cls_token", "head_bias", "student.blocks.0.norm1.weight"} <= no_decay_names
    assert "student.blocks.0.attn.qkv.bias" in no_decay_names
    assert {"head_weight", "student.blocks.0.attn.qkv.weight", "student.patch_embed.proj.weight"} <= decay_names
    assert "student.pos_embed" not in decay_names | no_decay_names  # fixed, not trained
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_teacher_is_not_in_the_state_dict_but_moves_with_the_method():
    method = MaskAlign(tiny_config(), TINY_IMAGE)
    assert not any(k.startswith("teacher") for k in method.state_dict())
    method.to(torch.float64)
    assert next(method.teacher.parameters()).dtype == torch.float64


# The official code's level-weight lists, written out (index i is teacher level i + 1).
OFFICIAL_WEIGHTS_12 = {
    "mean": [1 / 12] * 12,
    "out": [0.0] * 11 + [1.0],
    "linear_decay": [i / 66 for i in range(12)],          # 0, 1/66, …, 11/66: level 1 gets nothing
    "top5": [0.0] * 7 + [0.2] * 5,
    "mid6": [0.0] * 6 + [1.0] + [0.0] * 5,                # index 6: block 7
    "mid0": [1.0] + [0.0] * 11,
}
OFFICIAL_WEIGHTS_24 = {
    "linear_decay": [i / 276 for i in range(24)],         # Σ_{j<24} j = 276
    "top5": [0.0] * 19 + [0.2] * 5,
    "mid12": [0.0] * 12 + [1.0] + [0.0] * 11,
}


@pytest.mark.parametrize("depth,spec,expected", [(12, k, v) for k, v in OFFICIAL_WEIGHTS_12.items()]
                         + [(24, k, v) for k, v in OFFICIAL_WEIGHTS_24.items()])
def test_level_weights_are_the_official_lists(depth, spec, expected):
    from fastmim.methods.level_weights import level_weights

    weights = level_weights(spec, depth)
    assert [weights.get(level, 0.0) for level in range(1, depth + 1)] == pytest.approx(expected, abs=1e-15)
    assert all(w > 0 for w in weights.values())  # zero-weight levels are not computed at all


def test_mid_k_out_of_range_is_named():
    from fastmim.methods.level_weights import level_weights

    with pytest.raises(ValueError, match="K must be in 0..11"):
        level_weights("mid12", 12)


@pytest.mark.parametrize("head,shapes", [
    ("linear", None),
    ("norm_linear", [("LayerNorm", (384,)), ("Linear", (768, 384))]),
    ("mlp", [("Linear", (384, 384)), ("GELU", None), ("Linear", (768, 384))]),
    ("mlp2", [("Linear", (384, 384)), ("LayerNorm", (384,)), ("Linear", (768, 384))]),
])
def test_heads_of_a_vit_small_student_with_a_clip_b16_teacher(head, shapes):
    """Hidden layers keep the student's width (384), the output is the teacher's (768), LayerNorms use eps 1e-6."""
    torch.manual_seed(0)
    method = MaskAlign(tiny_config(student="small", student_kwargs=dict(depth=2), teacher="clip_b16",
                                   teacher_kwargs=dict(depth=2), head=head, fusion="sum", level_weights="top2"),
                       TINY_IMAGE)
    if head == "linear":
        assert method.head_weight.shape == (2, 768, 384) and method.head_bias.shape == (2, 768)
        return
    for module in method.heads:
        layers = [(type(m).__name__, tuple(m.weight.shape) if hasattr(m, "weight") else None) for m in module]
        assert layers == shapes
        assert all(m.eps == 1e-6 for m in module if isinstance(m, torch.nn.LayerNorm))
