"""The pure-PyTorch references against their definitions (no extension needed): conv2d over every patch then
gather for masked_patch_embed, explicit per-level sums for dynamic_align, normalize every teacher row then
gather for align_loss; gradcheck of each reference in float64; the errors that name the argument."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastmim.ops import cls_and_kept_rows, reference

from .helpers import LOSSES, ROW_NORMS, ids

f64 = torch.float64


# --- definitions --------------------------------------------------------------------------------------------

def conv_then_gather(images, ids_keep, weight, bias=None, pos_embed=None):
    p = weight.shape[-1]
    tokens = F.conv2d(images, weight, bias, stride=p).flatten(2).transpose(1, 2)
    if pos_embed is not None:
        tokens = tokens + pos_embed
    return tokens.gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))


def mix_by_loops(hidden, mix, head_weight=None, head_bias=None):
    levels = []
    for l in range(mix.shape[0]):
        level = sum(mix[l, s] * hidden[s] for s in range(hidden.shape[0]))
        if head_weight is not None:
            level = level @ head_weight[l].t()
            if head_bias is not None:
                level = level + head_bias[l]
        levels.append(level)
    return torch.stack(levels)


def normalize_all_then_gather(pred, target, ids_keep, loss, target_norm, pred_norm, beta=1.0, eps=1e-5):
    """Normalizes every teacher row (not only the kept ones), then picks CLS + the kept rows, then the loss
    written out element by element."""
    def norm(x, kind):
        if kind == "layernorm":
            mean = x.mean(-1, keepdim=True)
            var = ((x - mean) ** 2).mean(-1, keepdim=True)
            return (x - mean) / torch.sqrt(var + eps)
        if kind == "l2":
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x

    t = norm(target.double(), target_norm)
    rows = torch.cat([torch.zeros_like(ids_keep[:, :1]), ids_keep + 1], dim=1)
    t = torch.stack([t[:, b, rows[b]] for b in range(pred.shape[1])], dim=1)
    x = norm(pred.double(), pred_norm)
    d = x - t
    if loss == "cosine":
        cos = (x * t).sum(-1) / (x.norm(dim=-1).clamp_min(1e-8) * t.norm(dim=-1).clamp_min(1e-8))
        return (1 - cos).mean(dim=(1, 2))
    if loss == "smooth_l1":
        per = torch.where(d.abs() < beta, 0.5 * d * d / beta, d.abs() - 0.5 * beta) if beta > 0 else d.abs()
    elif loss == "l2":
        per = d * d
    else:
        per = d.abs()
    return per.mean(dim=(1, 2, 3))


# --- masked_patch_embed -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 16, 24, 8, 5), (1, 2, 12, 8, 4, 1), (3, 1, 8, 8, 2, 7)],
                         ids=["H!=W", "B=1,K=1", "p=2"])
def test_masked_patch_embed_reference_equals_conv_then_gather(shape):
    batch, channels, h, w, p, k = shape
    g = torch.Generator().manual_seed(0)
    n, dim = (h // p) * (w // p), 11
    images = torch.randn(batch, channels, h, w, dtype=f64, generator=g)
    weight = torch.randn(dim, channels, p, p, dtype=f64, generator=g)
    bias, pos = torch.randn(dim, dtype=f64, generator=g), torch.randn(n, dim, dtype=f64, generator=g)
    keep = ids(batch, n, min(k, n), generator=g)
    for args in ((bias, pos), (None, pos), (bias, None), (None, None)):
        torch.testing.assert_close(reference.masked_patch_embed(images, keep, weight, *args),
                                   conv_then_gather(images, keep, weight, *args))


def test_masked_patch_embed_reference_noncontiguous_inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 24, 16, dtype=f64, generator=g).transpose(2, 3)  # H != W, non-contiguous
    weight = torch.randn(6, 3, 4, 4, dtype=f64, generator=g)
    keep = ids(2, 24, 10, generator=g)[:, ::2]  # non-contiguous indices
    pos = torch.randn(6, 24, dtype=f64, generator=g).t()
    torch.testing.assert_close(reference.masked_patch_embed(images, keep, weight, None, pos),
                               conv_then_gather(images, keep, weight, None, pos))


def test_masked_patch_embed_reference_gradcheck():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 2, 8, 12, dtype=f64, generator=g, requires_grad=True)
    weight = torch.randn(5, 2, 4, 4, dtype=f64, generator=g, requires_grad=True)
    bias = torch.randn(5, dtype=f64, generator=g, requires_grad=True)
    pos = torch.randn(6, 5, dtype=f64, generator=g, requires_grad=True)
    keep = torch.tensor([[0, 5, 3], [2, 2, 4]])  # a repeated index too
    assert torch.autograd.gradcheck(lambda *a: reference.masked_patch_embed(a[0], keep, *a[1:]),
                                    (images, weight, bias, pos))


# --- dynamic_align ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [True, False])
def test_dynamic_align_reference_equals_loops(heads):
    g = torch.Generator().manual_seed(3)
    hidden, mix = torch.randn(4, 2, 3, 7, dtype=f64, generator=g), torch.randn(3, 4, dtype=f64, generator=g)
    weight = torch.randn(3, 5, 7, dtype=f64, generator=g) if heads else None
    bias = torch.randn(3, 5, dtype=f64, generator=g) if heads else None
    torch.testing.assert_close(reference.dynamic_align(hidden, mix, weight, bias),
                               mix_by_loops(hidden, mix, weight, bias))


def test_dynamic_align_reference_gradcheck():
    g = torch.Generator().manual_seed(4)
    shapes = ((3, 2, 2, 5), (2, 3), (2, 4, 5), (2, 4))
    args = [torch.randn(*s, dtype=f64, generator=g, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(reference.dynamic_align, args)


# --- align_loss ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("target_norm", ROW_NORMS)
@pytest.mark.parametrize("pred_norm", ("none", "layernorm"))
def test_align_loss_reference_equals_normalize_then_gather(loss, target_norm, pred_norm):
    g = torch.Generator().manual_seed(5)
    pred, target = torch.randn(3, 2, 4, 9, dtype=f64, generator=g), torch.randn(3, 2, 8, 9, dtype=f64, generator=g)
    keep = ids(2, 7, 3, generator=g)
    got = reference.align_loss(pred, target, cls_and_kept_rows(keep), loss, target_norm, pred_norm)
    assert got.dtype == f64
    torch.testing.assert_close(got, normalize_all_then_gather(pred, target, keep, loss, target_norm, pred_norm))


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_align_loss_reference_smooth_l1_beta(beta):
    g = torch.Generator().manual_seed(6)
    pred, target = torch.randn(2, 2, 3, 5, dtype=f64, generator=g), torch.randn(2, 2, 6, 5, dtype=f64, generator=g)
    keep = ids(2, 5, 2, generator=g)
    torch.testing.assert_close(reference.align_loss(pred, target, cls_and_kept_rows(keep), "smooth_l1", "none",
                                                   beta=beta),
                               normalize_all_then_gather(pred, target, keep, "smooth_l1", "none", "none", beta))


def test_align_loss_reference_order_of_kept_indices_does_not_matter():
    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(2, 2, 4, 6, generator=g), torch.randn(2, 2, 9, 6, generator=g)
    keep = ids(2, 8, 3, generator=g)
    flipped = keep.flip(1)
    pred_flipped = torch.cat([pred[:, :, :1], pred[:, :, 1:].flip(2)], dim=2)
    torch.testing.assert_close(reference.align_loss(pred, target, cls_and_kept_rows(keep)),
                               reference.align_loss(pred_flipped, target, cls_and_kept_rows(flipped)))


def test_align_loss_reference_dtype_is_float32_for_low_precisions():
    pred, target = torch.randn(2, 1, 3, 4, dtype=torch.bfloat16), torch.randn(2, 1, 5, 4, dtype=torch.float16)
    assert reference.align_loss(pred, target, torch.tensor([[0, 1, 4]])).dtype == torch.float32


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("pred_norm", ROW_NORMS)
def test_align_loss_reference_gradcheck(loss, pred_norm):
    g = torch.Generator().manual_seed(8)
    pred = torch.randn(2, 2, 3, 6, dtype=f64, generator=g, requires_grad=True)
    target = torch.randn(2, 2, 7, 6, dtype=f64, generator=g)
    keep = ids(2, 6, 2, generator=g)
    fn = lambda p: reference.align_loss(p, target, cls_and_kept_rows(keep), loss, "layernorm", pred_norm)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (pred,))
