"""Method.picture, per method: masks drawn from the generator it is given and from nothing else, each image's
loss consistent with the batch's, MAE's norm_pix reconstructions un-normalized with their own patch's
statistics, and the similarity map equal to a direct cosine computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastmim import ops
from fastmim.methods.base import Method
from fastmim.methods.pictures import patch_map, unnormalize_patches
from fastmim.methods.registry import build_method
from fastmim.ops.masked_pixel_loss import patch_targets
from fastmim.pictures import draw, draws_pictures
from fastmim.recipes import recipe

from . import toy_method  # noqa: F401  (the test-only method: one without pictures)

DEMOS = {"maskalign": "demo", "mae": "demo_mae", "mrmae": "demo_mrmae", "maskdistill": "demo_maskdistill"}


def demo_method(name: str, **changes) -> Method:
    cfg = recipe(DEMOS[name])
    for key, value in changes.items():
        setattr(cfg.method, key, value)
    torch.manual_seed(0)
    return build_method(cfg.method, cfg.data.image).eval()


def images(count: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_the_mask_comes_from_the_generator_given_and_from_no_global_stream(name):
    method, x = demo_method(name), images()
    before = torch.get_rng_state()
    first, again = draw(method, x, seed=3), draw(method, x, seed=3)
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn from torch's global generator
    assert torch.equal(first.mask.ids_keep, again.mask.ids_keep) and torch.equal(first.loss, again.loss)
    other = draw(method, x, seed=4)
    assert not torch.equal(first.mask.ids_masked, other.mask.ids_masked)
    n = method.student.num_patches
    for row in range(x.shape[0]):  # each row a split of the N patches
        assert sorted(first.mask.ids_keep[row].tolist() + first.mask.ids_masked[row].tolist()) == list(range(n))


def test_draw_leaves_the_method_in_the_mode_it_was_in():
    method = demo_method("maskdistill").train()
    draw(method, images(), seed=0)
    assert method.training and method.student.training


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_each_images_loss_averages_to_the_batch_loss_of_the_same_mask(name):
    method, x = demo_method(name), images(4)
    data = draw(method, x, seed=5)
    with torch.no_grad():
        frozen = method.frozen_pass(x, torch.Generator().manual_seed(5))
        batch = method.trained_pass(x, frozen)
    assert torch.equal(frozen.mask.ids_keep, data.mask.ids_keep)
    assert data.loss.shape == (4,) and torch.isfinite(data.loss).all()
    assert data.loss.mean().item() == pytest.approx(batch.loss.item(), rel=1e-5)


@pytest.mark.parametrize("name, importance, reconstruction, similarity", [
    ("maskalign", True, False, True), ("mae", False, True, False), ("mrmae", False, True, True),
    ("maskdistill", False, False, True)])
def test_what_each_method_shows(name, importance, reconstruction, similarity):
    data = draw(demo_method(name), images(), seed=0)
    assert (data.importance is not None, data.reconstruction is not None, data.similarity is not None) == (
        importance, reconstruction, similarity)


def test_mrmae_focused_mimicking_shows_the_first_teachers_importance():
    method, x = demo_method("mrmae", mask_mode="attention"), images()
    data = draw(method, x, seed=0)
    part = method.teachers[0].begin(x, [method.teachers[0].depth], importance=True)
    torch.testing.assert_close(data.importance, part.importance)


def test_a_method_without_the_hook_draws_no_pictures():
    toy = build_method(recipe("demo_toy").method, recipe("demo_toy").data.image)
    assert not draws_pictures(type(toy)) and draw(toy, images(), seed=0) is None
    assert all(draws_pictures(type(demo_method(name))) for name in DEMOS)


def test_unnormalizing_a_norm_pix_target_gives_the_original_patch():
    x, p = images(2, seed=7) * 3 + 0.5, 8
    x[0, :, :8, :8] = 0.3 + 1e-3 * x[0, :, :8, :8]  # a nearly flat patch: its variance is of the order of eps
    ids = torch.tensor([[0, 5, 63], [7, 8, 20]])
    original = patch_targets(x, ids, p)
    mean, var = original.mean(dim=-1, keepdim=True), original.var(dim=-1, keepdim=True)
    target = (original - mean) / (var + 1e-6).sqrt()  # what ops.masked_pixel_loss compares with (norm_pix)
    assert ops.masked_pixel_loss(target, x, ids, p).item() == pytest.approx(0.0, abs=1e-10)
    torch.testing.assert_close(unnormalize_patches(target, x, ids, p), original, atol=1e-5, rtol=0)


def test_mae_shows_the_decoders_prediction_unnormalized_and_raw_without_norm_pix():
    x = images()
    for norm_pix in (True, False):
        method = demo_method("mae", norm_pix=norm_pix)
        data = draw(method, x, seed=2)
        with torch.no_grad():
            _, pred = method.decode(x, data.mask)
        expected = unnormalize_patches(pred, x, data.mask.ids_masked, 8) if norm_pix else pred
        torch.testing.assert_close(data.reconstruction, expected)


def direct_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def whole_last_level(teacher, x: torch.Tensor) -> torch.Tensor:
    """The teacher's last block output at every row of one image [1+N, D], LayerNorm-normalized (no affine)."""
    level = teacher(x, [teacher.depth], importance=False).levels[0, 0].float()
    return F.layer_norm(level, level.shape[-1:], eps=1e-5)


@pytest.mark.parametrize("name", ["maskalign", "mrmae", "maskdistill"])
def test_the_similarity_map_is_the_cosine_of_prediction_and_target_at_the_supervised_patches(name):
    method, x = demo_method(name), images(1, seed=9)
    data = draw(method, x, seed=1)
    mask, teacher = data.mask, method.teachers[0]
    target = whole_last_level(teacher, x)
    with torch.no_grad():
        if name == "maskalign":
            pred = method.predict(method.student(x, mask.ids_keep, depth=max(method.student_levels)))[-1, 0, 1:]
            patches = mask.ids_keep[0]
        elif name == "mrmae":
            latent = method.student.encode(x, mask.ids_keep)
            pred, patches = method.mimic_heads[0](latent)[0, 1:], mask.ids_keep[0]
        else:
            dense = method.student.encode_dense(x, mask.ids_keep)
            pred, patches = method.head(dense[0, 1 + mask.ids_masked[0]]), mask.ids_masked[0]
    expected = torch.full((method.student.num_patches,), float("nan"))
    expected[patches] = direct_cosine(pred.float(), target[1 + patches])
    torch.testing.assert_close(data.similarity[0], expected, equal_nan=True, atol=1e-5, rtol=1e-4)
    assert torch.isnan(data.similarity[0]).sum() == method.student.num_patches - len(patches)


def test_patch_map_puts_row_values_at_their_patches_and_drops_the_cls_row():
    values, rows = torch.tensor([[9.0, 1.0, 2.0]]), torch.tensor([[0, 3, 1]])
    out = patch_map(values, rows, 4)
    assert out[0, 2] == 1.0 and out[0, 0] == 2.0 and torch.isnan(out[0, [1, 3]]).all()
