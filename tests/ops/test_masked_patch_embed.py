"""fastmim._C masked_patch_embed against the reference: gradcheck in float64, the precision rule in
float32/bfloat16/float16, awkward shapes, errors naming the argument, opcheck, and the same on CUDA."""
from __future__ import annotations

import pytest
import torch

from fastmim.ops import reference

from .helpers import (LOW_PRECISIONS, assert_precision_rule, at_odd_offset, cast_tree, check_device_errors, fused,
                      ids, op_name, raw_ops, run_with_grads)

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


def make(shape, dtype=torch.float64, device="cpu", seed=0, bias=True, pos=True, noncontiguous=False,
         odd_offset=False):
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
    values = [v.to(device) if isinstance(v, torch.Tensor) else v for v in cast_tree([images, keep, weight, b, pe], dtype)]
    if odd_offset:  # the floating inputs contiguous but one element into their storage
        values = [at_odd_offset(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in values]
    return values


def check_against_reference(shape, dtype, device="cpu", noncontiguous=False, bias=True, pos=True, odd_offset=False,
                            keep=None):
    low_in = make(shape, dtype, device, bias=bias, pos=pos, noncontiguous=noncontiguous, odd_offset=odd_offset)
    if keep is not None:
        low_in[1] = keep.to(device)
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


@pytest.mark.cpu_kernels
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


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", [SHAPES["vit"], SHAPES["p=6"], (2, 3, 28, 42, 14, 4, 12)], ids=["p=16", "p=6", "p=14"])
def test_channels_last_images(shape, dtype):
    """Channels-last images are gathered in (i, j, c) order, with contiguous patch lines (review F10)."""
    check_against_reference(shape, dtype, noncontiguous=True)


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
def test_views_at_odd_storage_offsets(dtype):
    check_against_reference(SHAPES["vit"], dtype, odd_offset=True)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_patch_size_14(dtype):
    check_against_reference((2, 3, 28, 42, 14, 4, 12), dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_repeated_patches_in_a_sample(dtype):
    """A patch kept twice by a sample (and by several samples): its image and pos_embed gradients add up."""
    keep = torch.tensor([[0, 5, 5, 3, 5], [2, 2, 4, 0, 1], [5, 5, 5, 5, 5]])
    check_against_reference((3, 2, 8, 12, 4, 5, 5), dtype, keep=keep)


@pytest.mark.parametrize("bias,pos", [(False, True), (True, False), (False, False)])
def test_optional_bias_and_pos_embed(bias, pos):
    check_against_reference(SHAPES["vit"], torch.float32, bias=bias, pos=pos)


@pytest.mark.cpu_kernels
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
    fn = fused().masked_patch_embed if entry == "fastmim.ops" else raw_ops().masked_patch_embed
    with pytest.raises(error, match=words):
        fn(*args)
        check_device_errors()  # the CUDA kernels report index values through the device error flag


def test_autocast_runs_in_the_autocast_dtype_as_its_fake_kernel_says():
    """Review F7: without an autocast rule eager ran (and returned) fp32 where conv2d gives bf16."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = make(SHAPES["vit"], torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused().masked_patch_embed(*args)
        ref = reference.masked_patch_embed(*args)
        with FakeTensorMode() as mode:
            fake = raw_ops().masked_patch_embed(*[mode.from_tensor(a) for a in args])  # the op, as compile sees it
    assert out.dtype == ref.dtype == fake.dtype == torch.bfloat16
    exact = reference.masked_patch_embed(*cast_tree(args, torch.float64))
    assert_precision_rule(out, ref, exact, 2)


def test_device_mix_names_the_argument():
    # Without a GPU the only other device is meta, which the dispatcher would send to the fake kernel, so
    # the C++ check is exercised by the CUDA test below; here the Python check in front of it.
    args = make(SHAPES["vit"], torch.float32)
    args[4] = args[4].to("meta")
    with pytest.raises(ValueError, match="pos_embed is on meta but images is on cpu"):
        fused().masked_patch_embed(*args)


def test_images_not_divisible_by_patch_size():
    images, keep, weight, bias, pos = make(SHAPES["vit"], torch.float32)
    for fn in (fused().masked_patch_embed, raw_ops().masked_patch_embed):
        with pytest.raises(ValueError, match="not divisible by the patch size"):
            fn(images[..., :-1], keep, weight, bias, None)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_opcheck(channels_last):
    """With channels-last images the kernel returns the image gradient channels-last: the fake kernel must say so."""
    images, keep, weight, bias, pos = make(SHAPES["D=13"], torch.float32, noncontiguous=channels_last)
    for args in ((images, keep, weight, bias, pos), (images, keep, weight, None, None)):
        grads = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args]
        torch.library.opcheck(raw_ops().masked_patch_embed.default, tuple(grads))
    grad = torch.randn(images.shape[0], keep.shape[1], weight.shape[0])
    torch.library.opcheck(raw_ops().masked_patch_embed_backward.default,
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
def test_cuda_cpu_first_argument_is_named_not_a_guard_error():
    """Review F6: the device guard came from the first tensor before the checks ran."""
    images, keep, weight, bias, pos = make(SHAPES["vit"], torch.float32, "cuda")
    with pytest.raises(ValueError, match="ids_keep is on cuda:0 but images is on cpu"):
        torch.ops.fastmim.masked_patch_embed(images.cpu(), keep, weight, bias, pos)


@pytest.mark.cuda
def test_cuda_out_of_range_ids_are_reported_and_the_context_survives():
    """Review F2: a bad index raised a device assertion that killed the CUDA context."""
    from fastmim import ops

    images, keep, weight, bias, pos = make(SHAPES["vit"], torch.float32, "cuda")
    bad = keep.clone()
    bad[0, 0] = 1000
    out = torch.ops.fastmim.masked_patch_embed(images, bad, weight, bias, pos)
    assert torch.isnan(out[0, 0]).all() and torch.isfinite(out[1]).all()
    with pytest.raises(IndexError, match="masked_patch_embed: ids_keep holds values outside"):
        ops.check_device_errors(images.device)
    check_against_reference(SHAPES["vit"], torch.float32, device="cuda")  # the context still works


@pytest.mark.cuda
def test_cuda_backward_is_deterministic():
    """Review F5: float atomics made the bias, pos_embed and image gradients vary from run to run."""
    keep = torch.randint(0, 4, (64, 6), generator=torch.Generator().manual_seed(0))
    images, _, weight, bias, pos = make((64, 3, 32, 32, 16, 6, 24), torch.float32, "cuda")
    wants = [True, False, True, True, True]
    first = run_with_grads(fused().masked_patch_embed, [images, keep.cuda(), weight, bias, pos], wants)[1]
    for _ in range(3):
        again = run_with_grads(fused().masked_patch_embed, [images, keep.cuda(), weight, bias, pos], wants)[1]
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cuda_opcheck(channels_last):
    images, keep, weight, bias, pos = make(SHAPES["D=13"], torch.float32, "cuda", noncontiguous=channels_last)
    args = tuple(a.clone().requires_grad_() if a.is_floating_point() else a for a in (images, keep, weight, bias, pos))
    torch.library.opcheck(torch.ops.fastmim.masked_patch_embed.default, args)
