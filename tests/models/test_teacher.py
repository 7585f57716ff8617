import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fastmim.methods.maskalign_reference import importance_from_maps
from fastmim.methods.maskalign_reference import naive_teacher as library_naive_teacher
from fastmim.models.teacher import IMAGENET_MEAN, IMAGENET_STD, FoldedQuickGELU, Teacher

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def naive_teacher(model, images, mean, std):
    """The straightforward computation: an explicit re-normalization pass over the image, then every block
    with its full attention map materialized; returns all block outputs and the last block's CLS row."""
    im_mean, im_std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images = (images * im_std + im_mean - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    outputs, attn_map = [], None
    for block in model.blocks:
        attn = block.attn
        y = block.norm1(x)
        b, t, d = y.shape
        q, k, v = attn.qkv(y).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn_map = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)  # [B, H, T, T]
        x = x + block.ls1(attn.proj((attn_map @ v).transpose(1, 2).reshape(b, t, d)))
        x = x + block.ls2(block.mlp(block.norm2(x)))
        outputs.append(x)
    importance = attn_map[:, :, 0, 1:].mean(dim=1)
    return torch.stack(outputs), importance


def save_random_weights(tmp_path, name, **kw):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kw).eval()
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_clip_b16_levels_and_importance_equal_naive(tmp_path):
    model, path = save_random_weights(tmp_path, "vit_base_patch16_clip_quickgelu_224")
    teacher = Teacher("clip_b16", student_grid=14, weights=str(path))
    images = torch.randn(2, 3, 224, 224)
    out = teacher(images, levels=list(range(1, 13)))
    with torch.no_grad():
        levels, importance = naive_teacher(model, images, CLIP_MEAN, CLIP_STD)
    torch.testing.assert_close(out.levels, levels, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.importance, importance, rtol=1e-5, atol=1e-7)
    # the benchmarks' reference path (unfolds the folded weights, keeps every attention map) agrees too
    ref_levels, maps = library_naive_teacher(teacher, images)
    torch.testing.assert_close(ref_levels, levels, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(importance_from_maps(teacher, maps), importance, rtol=1e-5, atol=1e-7)
    # only the asked-for levels come back, in the asked order
    torch.testing.assert_close(teacher(images, [12, 3]).levels, levels[[11, 2]], rtol=1e-4, atol=1e-4)
    # ... computed with QuickGELU folded into fc1/fc2 around a single SiLU (the naive model keeps QuickGELU)
    assert all(isinstance(block.mlp.act, FoldedQuickGELU) for block in teacher.model.blocks)
    assert not isinstance(model.blocks[0].mlp.act, FoldedQuickGELU)


def test_quick_gelu_fold_leaves_gelu_teachers_alone():
    teacher = Teacher("dino_b16", student_grid=4, weights="random", depth=2)
    assert all(type(block.mlp.act) is torch.nn.GELU for block in teacher.model.blocks)


def openai_layout(state):
    """timm CLIP keys → OpenAI's released `visual.*` layout (the inverse of timm's converter)."""
    out = {}
    for k, v in state.items():
        if k == "cls_token":
            out["visual.class_embedding"] = v[0, 0]
            continue
        if k == "pos_embed":
            out["visual.positional_embedding"] = v[0]
            continue
        for a, b in (("patch_embed.proj", "conv1"), ("blocks.", "transformer.resblocks."), ("norm_pre", "ln_pre"),
                     ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"),
                     ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            k = k.replace(a, b)
        if k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        out["visual." + k] = v
    return out


def test_openai_layout_file_gives_the_same_teacher(tmp_path):
    kw = dict(depth=2)
    model, path = save_random_weights(tmp_path, "vit_base_patch16_clip_quickgelu_224", **kw)
    openai_path = tmp_path / "openai.pth"
    torch.save(openai_layout(model.state_dict()), openai_path)
    images = torch.randn(1, 3, 224, 224)
    a = Teacher("clip_b16", 14, weights=str(path), **kw)(images, [1, 2])
    b = Teacher("clip_b16", 14, weights=str(openai_path), **kw)(images, [1, 2])
    torch.testing.assert_close(a.levels, b.levels)


def test_weights_file_with_wrong_keys_names_them(tmp_path):
    _, path = save_random_weights(tmp_path, "vit_base_patch16_224", depth=2)
    with pytest.raises(ValueError, match=r"missing keys: .*blocks\.2\."):
        Teacher("vit_base_patch16_224", 14, weights=str(path), depth=3)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Teacher("dino_b16", 14, weights=str(tmp_path / "nope.safetensors"))


def test_clip_l14_runs_at_196_with_resized_position_embedding():
    teacher = Teacher("clip_l14", student_grid=14, weights="random", depth=1)
    assert teacher.img_size == 196
    assert teacher.model.pos_embed.shape == (1, 1 + 14 * 14, 1024)
    out = teacher(torch.randn(1, 3, 224, 224), [1])
    assert out.levels.shape == (1, 1, 197, 1024) and out.importance.shape == (1, 196)


def test_register_tokens_are_dropped():
    teacher = Teacher("vit_small_patch14_reg4_dinov2", student_grid=4, weights="random", depth=1)
    assert teacher.num_prefix == 5
    out = teacher(torch.randn(2, 3, 64, 64), [1])
    assert out.levels.shape == (2 * 0 + 1, 2, 1 + 16, 384) and out.importance.shape == (2, 16)


def test_dino_takes_imagenet_normalized_images_unchanged(tmp_path):
    model, path = save_random_weights(tmp_path, "vit_base_patch16_224", depth=1)
    teacher = Teacher("dino_b16", 14, weights=str(path), depth=1)
    # DINO's statistics are ImageNet's: folding the re-normalization must leave the patch embedding as it was
    torch.testing.assert_close(teacher.model.patch_embed.proj.weight, model.patch_embed.proj.weight)
    torch.testing.assert_close(teacher.model.patch_embed.proj.bias, model.patch_embed.proj.bias)


def test_unknown_teacher_lists_the_known_ones():
    with pytest.raises(ValueError, match="clip_b16, clip_l14, dino_b16"):
        Teacher("clip_b32_wrong", 14)


def test_frozen_no_grad_eval():
    teacher = Teacher("vit_tiny_patch16_224", 4, weights="random", depth=2)
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    out = teacher(images, [1, 2])
    assert not out.levels.requires_grad
    with pytest.raises(ValueError, match="teacher levels must be in 1..2"):
        teacher(images, [3])
