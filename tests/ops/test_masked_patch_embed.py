"""fastmim._C masked_patch_embed against the reference: gradcheck in float64, the precision rule in
float32/bfloat16/float16, awkward shapes, errors naming the argument, opcheck, and the same on CUDA."""
from __future__ import annotations

import pytest
import torch

from fastmim.ops import reference

from .helpers import LOW_PRECISIONS, assert_precision_rule, cast_tree, fused, ids, run_with_grads

# (batch, channels, H, W, p, K, D): the ViT layout, D not a multiple of 8, K = 1, B = 1, H != W, p not a
# multiple of the 16-byte pack width.
SHAPES = {
    "vit": (2, 3, 32, 32, 16, 3, 24),
    "D=13": (2, 3, 16, 16, 8, 2, 13),
    "K=1": (3, 2, 16, 16, 8, 1, 8),
    "B=1": (1, 3, 16, 24, 8, 4, 16),
    "H!=W": (2, 3, 16, 40, 8, 7, 10),
    "p=6": (2, 2, 12, 18, 6, 5, 9),
}


def make(shape, dtype=torch.float64, device="cpu", seed=0, bias=True, pos=True, noncontiguous=False):
    batch, channels, h, w, p, k, dim = shape
    g = torch.Generator().manual_seed(seed)
    n = (h // p) * (w // p)
    images = torch.randn(batch, channels, h, w, generator=g, dtype=torch.float64)
    if noncontiguous:  # channels-last storage and a strided index tensor
        images = images.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(dim, channels, p, p, generator=g, dtype=torch.float64) / p
    b = torch.randn(dim, generator=g, dtype=torch.float64) if bias else None
    pe = torch.randn(n, dim, generator=g, dtype=torch.float64) if pos else None
    keep = ids(batch, n, k, generator=g)
    if noncontiguous:
        keep = keep.repeat_interleave(2, dim=1)[:, ::2]
    values = [images, keep, weight, b, pe]
    return [v.to(device) if isinstance(v, torch.Tensor) else v for v in cast_tree(values, dtype)]


def check_against_reference(shape, dtype, device="cpu", noncontiguous=False, bias=True, pos=True):
    low_in = make(shape, dtype, device, bias=bias, pos=pos, noncontiguous=noncontiguous)
    grad = torch.randn(shape[0], shape[5], shape[6], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    wants = [True, False, True, True, True]
    exact_in = cast_tree([v.cpu() if isinstance(v, torch.Tensor) else v for v in low_in], torch.float64)
    exact, exact_grads = run_with_grads(reference.masked_patch_embed, exact_in, wants, grad)
    ref, ref_grads = run_with_grads(reference.masked_patch_embed, low_in, wants, grad.to(device))
    out, grads = run_with_grads(fused().masked_patch_embed, low_in, wants, grad.to(device))
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert_precision_rule(out.cpu(), ref.cpu(), exact, 2, "out")
    names = [n for n, v, w in zip(("images", "ids", "weight", "bias", "pos_embed"), low_in, wants)
             if w and isinstance(v, torch.Tensor)]
    for name, g, r, e in zip(names, grads, ref_grads, exact_grads):
        assert_precision_rule(g.cpu(), r.cpu(), e, 3, f"grad {name}")


def test_gradcheck_float64():
    images, keep, weight, bias, pos = make((2, 2, 8, 12, 4, 3, 5))
    keep = torch.tensor([[0, 5, 3], [2, 2, 4]])  # a patch kept twice: its image gradient adds up
    args = [t.requires_grad_() for t in (images, weight, bias, pos)]
    fn = fused().masked_patch_embed
    assert torch.autograd.gradcheck(lambda i, w, b, p: fn(i, keep, w, b, p), args)
    assert torch.autograd.gradcheck(lambda i, w: fn(i, keep, w), args[:2])


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(shape, dtype):
    check_against_reference(shape, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_noncontiguous_inputs(dtype):
    check_against_reference(SHAPES["H!=W"], dtype, noncontiguous=True)


@pytest.mark.parametrize("bias,pos", [(False, True), (True, False), (False, False)])
def test_optional_bias_and_pos_embed(bias, pos):
    check_against_reference(SHAPES["vit"], torch.float32, bias=bias, pos=pos)


def test_forward_runs_the_compiled_cpu_kernel():
    images, keep, weight, bias, pos = make(SHAPES["vit"], torch.float32)
    direct = torch.ops.fastmim.masked_patch_embed(images, keep, weight, bias, pos)
    torch.testing.assert_close(fused().masked_patch_embed(images, keep, weight, bias, pos), direct)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastmim::masked_patch_embed", "CPU")


BAD = [  # (argument index, replacement, exception, words in the message)
    (0, lambda a: a[0][0], ValueError, "images must have 4 dimensions"),
    (0, lambda a: a[0].long(), TypeError, "images must be float"),
    (1, lambda a: a[1].float(), TypeError, "ids_keep must be int64"),
    (1, lambda a: a[1][:1], ValueError, "ids_keep"),
    (1, lambda a: a[1][0], ValueError, "ids_keep must have 2 dimensions"),
    (1, lambda a: a[1] + 100, IndexError, "ids_keep holds values outside"),
    (1, lambda a: a[1] - 100, IndexError, "ids_keep holds values outside"),
    (2, lambda a: a[2][:, :, :, :-1], ValueError, "weight"),
    (2, lambda a: a[2][:, :2], ValueError, "channels"),
    (2, lambda a: a[2].double(), TypeError, "weight must have the dtype of images"),
    (3, lambda a: a[3][:-1], ValueError, "bias must have shape"),
    (3, lambda a: a[3].half(), TypeError, "bias must have the dtype of images"),
    (4, lambda a: a[4][:-1], ValueError, "pos_embed must have shape"),
    (4, lambda a: a[4].bfloat16(), TypeError, "pos_embed must have the dtype of images"),
]


@pytest.mark.parametrize("index,replace,error,words", BAD, ids=[b[3] for b in BAD])
@pytest.mark.parametrize("entry", ["fastmim.ops", "torch.ops"])
def test_bad_inputs_name_the_argument(index, replace, error, words, entry):
    args = make(SHAPES["vit"], torch.float32)
    args[index] = replace(args)
    fn = fused().masked_patch_embed if entry == "fastmim.ops" else torch.ops.fastmim.masked_patch_embed
    with pytest.raises(error, match=words):
        fn(*args)


def test_device_mix_names_the_argument():
    # Without a GPU the only other device is meta, which the dispatcher would send to the fake kernel, so
    # the C++ check is exercised by the CUDA test below; here the Python check in front of it.
    args = make(SHAPES["vit"], torch.float32)
    args[4] = args[4].to("meta")
    with pytest.raises(ValueError, match="pos_embed is on meta but images is on cpu"):
        fused().masked_patch_embed(*args)


def test_images_not_divisible_by_patch_size():
    images, keep, weight, bias, pos = make(SHAPES["vit"], torch.float32)
    for fn in (fused().masked_patch_embed, torch.ops.fastmim.masked_patch_embed):
        with pytest.raises(ValueError, match="not divisible by the patch size"):
            fn(images[..., :-1], keep, weight, bias, None)


def test_opcheck():
    images, keep, weight, bias, pos = make(SHAPES["D=13"], torch.float32)
    for args in ((images, keep, weight, bias, pos), (images, keep, weight, None, None)):
        grads = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args]
        torch.library.opcheck(torch.ops.fastmim.masked_patch_embed.default, tuple(grads))
    grad = torch.randn(images.shape[0], keep.shape[1], weight.shape[0])
    torch.library.opcheck(torch.ops.fastmim.masked_patch_embed_backward.default,
                          (grad, images, keep, weight, [True, True, False, True]))


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cuda_matches_reference(shape, dtype):
    check_against_reference(shape, dtype, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_cuda_noncontiguous_inputs(dtype):
    check_against_reference(SHAPES["H!=W"], dtype, device="cuda", noncontiguous=True)


@pytest.mark.cuda
def test_cuda_repeated_index_gradients_add_up():
    images, keep, weight, bias, pos = make((2, 2, 8, 12, 4, 3, 5), torch.float32, "cuda")
    keep = torch.tensor([[0, 5, 5], [2, 2, 2]], device="cuda")
    wants = [True, False, True, True, True]
    args = [images, keep, weight, bias, pos]
    out, grads = run_with_grads(fused().masked_patch_embed, args, wants)
    ref, ref_grads = run_with_grads(reference.masked_patch_embed, [a.cpu() for a in args], wants)
    torch.testing.assert_close(out.cpu(), ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu(), r)


@pytest.mark.cuda
def test_cuda_float64_is_refused_naming_the_argument():
    args = make(SHAPES["vit"], torch.float64, "cuda")
    with pytest.raises(TypeError, match="images must be float32/bfloat16/float16 on CUDA"):
        torch.ops.fastmim.masked_patch_embed(*args)


@pytest.mark.cuda
def test_cuda_device_mix_names_the_argument():
    args = make(SHAPES["vit"], torch.float32, "cuda")
    args[2] = args[2].cpu()
    with pytest.raises(ValueError, match="weight is on cpu"):
        fused().masked_patch_embed(*args)


@pytest.mark.cuda
def test_cuda_opcheck():
    images, keep, weight, bias, pos = make(SHAPES["D=13"], torch.float32, "cuda")
    args = tuple(a.clone().requires_grad_() if a.is_floating_point() else a for a in (images, keep, weight, bias, pos))
    torch.library.opcheck(torch.ops.fastmim.masked_patch_embed.default, args)
