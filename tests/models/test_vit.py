import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from fastmim.models.attention import attention, resolve_backend
from fastmim.models.pos_embed import sincos_2d
from fastmim.models.vit import VisionTransformer, vit_model


def small_student(**kw):
    params = dict(img_size=64, embed_dim=64, depth=3, num_heads=2)
    params.update(kw)
    return vit_model("tiny", **params)


def mae_numpy_sincos(dim, grid):
    """MAE's get_2d_sincos_pos_embed, transcribed in numpy."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([one_d(dim // 2, grid_w), one_d(dim // 2, grid_h)], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_sincos_matches_mae():
    ours = sincos_2d(64, 5, 5).double().numpy()
    np.testing.assert_allclose(ours, mae_numpy_sincos(64, 5), atol=1e-6)


def test_levels_shapes_and_patch_drop():
    torch.manual_seed(0)
    student = small_student().eval()
    images = torch.randn(2, 3, 64, 64)
    ids_keep = torch.tensor([[0, 5, 9], [3, 4, 15]])
    levels = student(images, ids_keep)
    assert len(levels) == 3 and levels[0].shape == (2, 4, 64)
    # the embedded tokens equal conv over all patches then gather, plus CLS
    proj = student.patch_embed.proj
    full = F.conv2d(images, proj.weight, proj.bias, stride=16).flatten(2).transpose(1, 2) + student.pos_embed[:, 1:]
    expected = full.gather(1, ids_keep[..., None].expand(-1, -1, 64))
    torch.testing.assert_close(student.embed(images, ids_keep)[:, 1:], expected, rtol=1e-5, atol=1e-5)
    assert len(student(images, ids_keep, depth=2)) == 2


def test_state_dict_loads_into_timm_and_computes_the_same():
    student = vit_model("base").eval()
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    result = model.load_state_dict(student.state_dict(), strict=False)
    assert set(result.missing_keys) == {"head.weight", "head.bias"}
    assert result.unexpected_keys == []
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = student(images)[-1]
        theirs = model.blocks(model._pos_embed(model.patch_embed(images)))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", ["tiny", "small", "large", "huge"])
def test_sizes_have_timm_names(size):
    with torch.device("meta"):
        student = vit_model(size, patch_size=14 if size == "huge" else 16)
        model = timm.create_model(f"vit_{size}_patch{14 if size == 'huge' else 16}_224", pretrained=False)
    assert set(model.state_dict()) - set(student.state_dict()) <= {"head.weight", "head.bias"}
    assert set(student.state_dict()) - set(model.state_dict()) == set()


def test_bad_images_are_named():
    student = small_student()
    with pytest.raises(ValueError, match="divisible by patch_size"):
        VisionTransformer(img_size=60, patch_size=16)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        student(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="64x64"):
        student(torch.randn(1, 3, 48, 48))


def test_math_attention_equals_sdpa():
    q, k, v = torch.randn(3, 2, 4, 7, 16).unbind(0)
    torch.testing.assert_close(attention(q, k, v, "math"), attention(q, k, v, "sdpa"), rtol=1e-5, atol=1e-5)
    student = small_student().eval()
    images, ids = torch.randn(2, 3, 64, 64), torch.tensor([[1, 2], [3, 4]])
    a = student(images, ids)[-1]
    student.set_attention_backend("math", "cpu")
    torch.testing.assert_close(student(images, ids)[-1], a, rtol=1e-5, atol=1e-5)


def test_attention_backend_resolution():
    assert resolve_backend("auto", "cpu") == "math"  # faster than CPU SDPA at these lengths (see attention.py)
    with pytest.raises(ValueError, match="attention backend must be one of"):
        resolve_backend("fast", "cpu")
    for name in ("flash", "xformers"):
        with pytest.raises(RuntimeError, match=name):
            resolve_backend(name, "cpu")  # not installed here, and never usable on the CPU


def test_initialization_is_maes():
    """models_mae.py's initialize_weights: xavier-uniform on the patch projection's flattened weight, its bias left
    as nn.Conv2d draws it (the first parameters the model creates, so the same seed gives the same bias),
    N(0, .02) CLS token, xavier linears with zero biases, LayerNorms at one and zero."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 64, kernel_size=16, stride=16)  # what the student's PatchEmbed draws first
    torch.manual_seed(0)
    student = small_student()
    torch.testing.assert_close(student.patch_embed.proj.bias, conv.bias)
    assert student.patch_embed.proj.bias.abs().max() <= 1 / (3 * 16 * 16) ** 0.5  # Conv2d's default bound
    bound = (6 / (64 + 3 * 16 * 16)) ** 0.5  # xavier-uniform on the [64, 768] view
    weight = student.patch_embed.proj.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    block = student.blocks[0]
    assert torch.equal(block.attn.qkv.bias, torch.zeros_like(block.attn.qkv.bias))
    assert torch.equal(block.norm1.weight, torch.ones(64)) and 0.01 < student.cls_token.std() < 0.03
