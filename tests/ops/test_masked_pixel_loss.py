"""masked_pixel_loss against its definition (MAE's forward_loss) and the compiled kernels against the
reference: gradcheck in float64, the precision rule in float32/bfloat16/float16 (pred and images dtypes may
differ), p = 14, M = 1, B = 1, non-contiguous inputs and views at odd offsets, errors naming the argument,
opcheck, nothing of the image kept for backward, and the same on CUDA."""
from __future__ import annotations

import pytest
import torch

from fastmim.ops import reference

from .helpers import (LOW_PRECISIONS, assert_precision_rule, at_odd_offset, check_device_errors, fused, ids,
                      raw_ops, run_with_grads)

# (batch, channels, H, W, p, M): the MAE layout, p = 14, M = 1, B = 1, one channel, H != W.
SHAPES = {
    "mae": (2, 3, 32, 32, 16, 3),
    "p=14": (2, 3, 28, 42, 14, 4),
    "M=1": (3, 3, 16, 16, 8, 1),
    "B=1": (1, 2, 24, 16, 8, 5),
    "C=1": (2, 1, 16, 16, 4, 7),
}


def make(shape, dtype=torch.float64, image_dtype=None, device="cpu", seed=0, noncontiguous=False, odd_offset=False):
    batch, channels, h, w, p, m = shape
    g = torch.Generator().manual_seed(seed)
    n = (h // p) * (w // p)
    pred = torch.randn(batch, m, p * p * channels, generator=g, dtype=torch.float64)
    images = 2 * torch.randn(batch, channels, h, w, generator=g, dtype=torch.float64) + 0.5
    keep = ids(batch, n, m, generator=g)
    if noncontiguous:  # a transposed prediction, channels-last images, strided ids
        pred = pred.transpose(0, 1).contiguous().transpose(0, 1)
        images = images.contiguous(memory_format=torch.channels_last)
        keep = keep.repeat_interleave(2, dim=1)[:, ::2]
    pred, images = pred.to(device, dtype), images.to(device, image_dtype or dtype)
    if odd_offset:
        pred, images = at_odd_offset(pred), at_odd_offset(images)
    return pred, images, keep.to(device), p


def check_against_reference(shape, dtype, image_dtype=None, device="cpu", norm_pix=True, **variant):
    pred, images, keep, p = make(shape, dtype, image_dtype, device, **variant)

    def call(fn):
        return lambda x, i: fn(x, i, keep.to(x.device), p, norm_pix)

    grad = torch.tensor(1.7, dtype=torch.float64)
    exact, (exact_grad,) = run_with_grads(call(reference.masked_pixel_loss), [pred.double().cpu(),
                                                                              images.double().cpu()],
                                          [True, False], grad)
    ref, (ref_grad,) = run_with_grads(call(reference.masked_pixel_loss), [pred, images], [True, False], grad.to(device))
    out, (out_grad,) = run_with_grads(call(fused().masked_pixel_loss), [pred, images], [True, False], grad.to(device))
    assert out.dtype == torch.float32 and out.shape == () and out_grad.dtype == pred.dtype
    assert_precision_rule(out.cpu(), ref.cpu(), exact, 2, "loss")
    assert_precision_rule(out_grad.cpu(), ref_grad.cpu(), exact_grad, 3, "grad pred")


def mae_forward_loss(pred_all, images, mask, p, norm_pix):
    """facebookresearch/mae models_mae.py forward_loss, transcribed: pred for every patch [B, N, p²·3], mask 1
    where the patch was removed."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    target = torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.e-6) ** .5
    loss = ((pred_all - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reference_equals_mae_forward_loss(norm_pix):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 48, generator=g, dtype=torch.float64)
    pred_all = torch.randn(2, 6, 768, generator=g, dtype=torch.float64)
    masked = torch.tensor([[0, 4, 5], [3, 1, 2]])
    mask = torch.zeros(2, 6, dtype=torch.float64).scatter_(1, masked, 1.0)
    pred = pred_all.gather(1, masked[..., None].expand(-1, -1, 768))
    expected = mae_forward_loss(pred_all, images, mask, 16, norm_pix)
    torch.testing.assert_close(reference.masked_pixel_loss(pred, images, masked, 16, norm_pix), expected)
    torch.testing.assert_close(fused().masked_pixel_loss(pred.float(), images.float(), masked, 16, norm_pix),
                               expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("norm_pix", [True, False])
def test_gradcheck_float64(norm_pix):
    pred, images, keep, p = make(SHAPES["p=14"][:4] + (7, 2))
    pred.requires_grad_()
    fn = fused().masked_pixel_loss
    assert fn(pred, images, keep, p, norm_pix).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: fn(x, images, keep, p, norm_pix), (pred,))


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(shape, dtype, norm_pix):
    check_against_reference(shape, dtype, norm_pix=norm_pix)


@pytest.mark.parametrize("dtype,image_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                               (torch.float16, torch.float32)], ids=str)
def test_mixed_pred_and_image_dtypes(dtype, image_dtype):
    """Under autocast the decoder's prediction is bf16 and the images float32."""
    check_against_reference(SHAPES["mae"], dtype, image_dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("variant", ["noncontiguous", "odd_offset"])
def test_noncontiguous_and_odd_offsets(dtype, variant):
    check_against_reference(SHAPES["p=14"], dtype, **{variant: True})


def test_backward_keeps_nothing_of_the_image():
    pred, images, keep, p = make(SHAPES["mae"], torch.float32)
    pred.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = fused().masked_pixel_loss(pred, images, keep, p)
    assert [tuple(t.shape) for t in saved] == [tuple(pred.shape)]  # d(loss)/d(pred) only
    (grad,) = torch.autograd.grad(loss, pred)
    (expected,) = torch.autograd.grad(reference.masked_pixel_loss(pred, images, keep, p), pred)
    torch.testing.assert_close(grad, expected)


BAD = [  # (argument, replacement, exception, words in the message)
    ("pred", lambda a: a["pred"][0], ValueError, "pred must have 3 dimensions"),
    ("pred", lambda a: a["pred"][..., :-1], ValueError, "pred must be"),
    ("pred", lambda a: a["pred"].long(), TypeError, "pred must be float"),
    ("images", lambda a: a["images"][:, :, :-1], ValueError, "not divisible by the patch size"),
    ("images", lambda a: a["images"].int(), TypeError, "images must be float"),
    ("ids", lambda a: a["ids"][:1], ValueError, "ids must be"),
    ("ids", lambda a: a["ids"].float(), TypeError, "ids must be int64"),
    ("ids", lambda a: a["ids"] + 100, IndexError, "ids holds values outside"),
    ("ids", lambda a: -a["ids"] - 1, IndexError, "ids holds values outside"),
    ("patch_size", lambda a: 0, ValueError, "patch_size must be positive"),
    ("eps", lambda a: 0.0, ValueError, "eps must be positive"),
]


@pytest.mark.parametrize("name,replace,error,words", BAD, ids=[b[3] for b in BAD])
@pytest.mark.parametrize("entry", ["fastmim.ops", "torch.ops"])
def test_bad_inputs_name_the_argument(name, replace, error, words, entry):
    pred, images, keep, p = make(SHAPES["mae"], torch.float32)
    args = dict(pred=pred, images=images, ids=keep, patch_size=p, norm_pix=True, eps=1e-6)
    args[name] = replace(args)
    with pytest.raises(error, match=words):
        if entry == "fastmim.ops":
            fused().masked_pixel_loss(**args)
        else:
            raw_ops().masked_pixel_loss(*args.values(), True)
            check_device_errors()  # the CUDA kernels report index values through the device error flag


def test_opcheck():
    pred, images, keep, p = make(SHAPES["p=14"], torch.float32)
    for norm_pix, with_grad in ((True, True), (False, True), (True, False)):
        args = (pred.clone().requires_grad_(with_grad), images, keep, p, norm_pix, 1e-6, with_grad)
        torch.library.opcheck(raw_ops().masked_pixel_loss.default, args)


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cuda_matches_reference(shape, dtype, norm_pix):
    check_against_reference(shape, dtype, device="cuda", norm_pix=norm_pix)


@pytest.mark.cuda
def test_cuda_mixed_dtypes_noncontiguous_and_errors():
    from fastmim import ops

    check_against_reference(SHAPES["mae"], torch.bfloat16, torch.float32, device="cuda")
    check_against_reference(SHAPES["p=14"], torch.bfloat16, device="cuda", noncontiguous=True)
    pred, images, keep, p = make(SHAPES["mae"], torch.float32, device="cuda")
    with pytest.raises(ValueError, match="ids is on cpu"):
        torch.ops.fastmim.masked_pixel_loss(pred, images, keep.cpu(), p, True, 1e-6, True)
    loss, _ = torch.ops.fastmim.masked_pixel_loss(pred, images, keep + 100, p, True, 1e-6, True)
    assert torch.isnan(loss)
    with pytest.raises(IndexError, match="masked_pixel_loss: ids holds values outside"):
        ops.check_device_errors(pred.device)


@pytest.mark.cuda
def test_cuda_opcheck():
    pred, images, keep, p = make(SHAPES["p=14"], torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.fastmim.masked_pixel_loss.default,
                          (pred.clone().requires_grad_(), images, keep, p, True, 1e-6, True))
