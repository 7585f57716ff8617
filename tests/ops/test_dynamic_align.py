"""fastmim._C dynamic_align against the reference: gradcheck in float64, the precision rule in
float32/bfloat16/float16, awkward shapes, the chunked backward, autocast, errors naming the argument, opcheck,
and the same on CUDA."""
from __future__ import annotations

import pytest
import torch

from fastmim.ops import reference

from .helpers import LOW_PRECISIONS, assert_precision_rule, at_odd_offset, cast_tree, fused, raw_ops, run_with_grads

# (S, B, T, D, L, Dt): D not a multiple of 8, B = 1, T = 2 (CLS + K = 1), one output level.
SHAPES = {
    "base": (6, 2, 5, 32, 3, 24),
    "D=13": (4, 2, 3, 13, 2, 7),
    "B=1,K=1": (3, 1, 2, 16, 3, 16),
    "L=1": (5, 3, 4, 24, 1, 40),
}


def make(shape, dtype=torch.float64, device="cpu", heads=True, bias=True, seed=0, noncontiguous=False,
         odd_offset=False):
    s, b, t, d, l, dt = shape
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(s, b, t, d, generator=g, dtype=torch.float64)
    if noncontiguous:  # every other level of a larger stack, as a slice of the student's levels would be
        hidden = torch.stack([hidden, hidden], dim=1).flatten(0, 1)[::2]
    mix = torch.randn(l, s, generator=g, dtype=torch.float64) / s
    weight = torch.randn(l, dt, d, generator=g, dtype=torch.float64) / d**0.5 if heads else None
    head_bias = torch.randn(l, dt, generator=g, dtype=torch.float64) if heads and bias else None
    if noncontiguous and heads:
        weight = weight.transpose(1, 2).contiguous().transpose(1, 2)
    values = [v.to(device) if isinstance(v, torch.Tensor) else v for v in cast_tree([hidden, mix, weight, head_bias], dtype)]
    if odd_offset:  # contiguous, but one element into their storage
        values = [at_odd_offset(v) if isinstance(v, torch.Tensor) else v for v in values]
    return values


def check_against_reference(shape, dtype, device="cpu", heads=True, bias=True, noncontiguous=False, mix_dtype=None,
                            odd_offset=False):
    low = make(shape, dtype, device, heads, bias, noncontiguous=noncontiguous, odd_offset=odd_offset)
    if mix_dtype is not None:
        low[1] = low[1].to(mix_dtype)
    s, b, t, d, l, dt = shape
    grad = torch.randn(l, b, t, dt if heads else d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    wants = [True, True, heads, heads and bias]
    exact_in = cast_tree([v.cpu() if v is not None else v for v in low], torch.float64)
    exact, exact_grads = run_with_grads(reference.dynamic_align, exact_in, wants, grad)
    ref, ref_grads = run_with_grads(reference.dynamic_align, low, wants, grad.to(device))
    out, grads = run_with_grads(fused().dynamic_align, low, wants, grad.to(device))
    assert out.dtype == dtype
    assert_precision_rule(out.cpu(), ref.cpu(), exact, 2, "out")
    names = [n for n, w in zip(("hidden", "mix", "head_weight", "head_bias"), wants) if w]
    for name, g, r, e in zip(names, grads, ref_grads, exact_grads):
        assert g.dtype == r.dtype, name
        assert_precision_rule(g.cpu(), r.cpu(), e, 3, f"grad {name}")


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("heads,bias", [(True, True), (True, False), (False, False)])
def test_gradcheck_float64(heads, bias):
    args = [a.requires_grad_() for a in make((3, 2, 2, 5, 2, 4), heads=heads, bias=bias) if a is not None]
    assert torch.autograd.gradcheck(fused().dynamic_align, args)


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(shape, dtype):
    check_against_reference(shape, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("heads,bias", [(True, False), (False, False)])
def test_without_heads_or_bias(dtype, heads, bias):
    check_against_reference(SHAPES["D=13"], dtype, heads=heads, bias=bias)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_noncontiguous_inputs(dtype):
    check_against_reference(SHAPES["base"], dtype, noncontiguous=True)


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
def test_views_at_odd_storage_offsets(dtype):
    check_against_reference(SHAPES["base"], dtype, odd_offset=True)
    check_against_reference(SHAPES["D=13"], dtype, heads=False, bias=False, odd_offset=True)


@pytest.mark.parametrize("levels_out", [1, 4, 5, 12])
def test_output_levels_around_the_register_tile(levels_out):
    check_against_reference((12, 2, 3, 16, levels_out, 8), torch.bfloat16)


def test_float32_mix_with_bfloat16_levels():
    check_against_reference(SHAPES["base"], torch.bfloat16, mix_dtype=torch.float32)


def test_chunked_backward_equals_one_chunk():
    # 5 output levels × 4480 rows × 96 × 4 bytes > 8 MB: the mixed-level gradient is produced in four row chunks.
    # Two input levels and two head outputs keep the work (and the emulated run) small for that many bytes.
    shape = s, b, t, d, l, dt = (2, 16, 280, 96, 5, 2)
    assert l * b * t * d * 4 > 8 << 20
    check_against_reference(shape, torch.float32)


def test_backward_keeps_only_the_inputs():
    hidden, mix, weight, bias = (a.requires_grad_() for a in make(SHAPES["base"], torch.float32))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused().dynamic_align(hidden, mix, weight, bias)
    assert all(any(t is x for x in (hidden, mix, weight)) for t in saved), [tuple(t.shape) for t in saved]
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        reference.dynamic_align(hidden, mix, weight, bias)
    assert any(t.numel() == 3 * 2 * 5 * 32 for t in saved)  # the reference keeps the mixed levels


def test_autocast_runs_in_the_autocast_dtype():
    hidden, mix, weight, bias = make(SHAPES["base"], torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = fused().dynamic_align(hidden, mix, weight, bias), reference.dynamic_align(hidden, mix, weight, bias)
    assert out.dtype == ref.dtype == torch.bfloat16
    exact = reference.dynamic_align(*cast_tree([hidden, mix, weight, bias], torch.float64))
    assert_precision_rule(out, ref, exact, 2)


BAD = [  # (argument index, replacement, exception, words in the message)
    (0, lambda a: a[0][0], ValueError, "hidden must have 4 dimensions"),
    (0, lambda a: a[0].long(), TypeError, "hidden must be float"),
    (1, lambda a: a[1][:, :-1], ValueError, "mix must be"),
    (1, lambda a: a[1][0], ValueError, "mix must have 2 dimensions"),
    (1, lambda a: a[1].long(), TypeError, "mix must be float"),
    (2, lambda a: a[2][:-1], ValueError, "head_weight must have shape"),
    (2, lambda a: a[2][..., :-1], ValueError, "head_weight must have shape"),
    (3, lambda a: a[3][:, :-1], ValueError, "head_bias must have shape"),
]


@pytest.mark.parametrize("index,replace,error,words", BAD, ids=[b[3] for b in BAD])
@pytest.mark.parametrize("entry", ["fastmim.ops", "torch.ops"])
def test_bad_inputs_name_the_argument(index, replace, error, words, entry):
    args = make(SHAPES["base"], torch.float32)
    args[index] = replace(args)
    fn = fused().dynamic_align if entry == "fastmim.ops" else raw_ops().dynamic_align
    with pytest.raises(error, match=words):
        fn(*args)


def test_bias_without_weight_and_device_mix():
    hidden, mix, weight, bias = make(SHAPES["base"], torch.float32)
    for fn in (fused().dynamic_align, raw_ops().dynamic_align):
        with pytest.raises(ValueError, match="head_bias was given without head_weight"):
            fn(hidden, mix, None, bias)
    with pytest.raises(ValueError, match="head_weight is on meta but hidden is on cpu"):
        fused().dynamic_align(hidden, mix, weight.to("meta"), bias)
    with pytest.raises(TypeError, match="head_weight must have the dtype of hidden"):
        raw_ops().dynamic_align(hidden, mix, weight.double(), bias)


def test_opcheck():
    for heads in (True, False):
        values = make(SHAPES["D=13"], torch.float32, heads=heads)
        args = [a.clone().requires_grad_() if a is not None else None for a in values]
        torch.library.opcheck(raw_ops().dynamic_align.default, tuple(args))
    hidden, mix, weight, _ = make(SHAPES["D=13"], torch.float32)
    grad = torch.randn(2, 2, 3, 7)
    torch.library.opcheck(raw_ops().dynamic_align_backward.default,
                          (grad, hidden, mix, weight, [True, True, True, False]))


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cuda_matches_reference(shape, dtype):
    check_against_reference(shape, dtype, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_cuda_noncontiguous_no_heads_chunked(dtype):
    check_against_reference(SHAPES["base"], dtype, device="cuda", noncontiguous=True)
    check_against_reference(SHAPES["D=13"], dtype, device="cuda", heads=False, bias=False)
    check_against_reference((4, 20, 300, 96, 5, 8), dtype, device="cuda")


@pytest.mark.cuda
def test_cuda_many_levels_use_the_unpacked_kernel():
    check_against_reference((60, 2, 3, 16, 4, 8), torch.bfloat16, device="cuda")  # S·8·32·4 B > 48 KB


@pytest.mark.cuda
def test_cuda_autocast_and_errors():
    hidden, mix, weight, bias = make(SHAPES["base"], torch.float32, "cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        assert fused().dynamic_align(hidden, mix, weight, bias).dtype == torch.float16
    with pytest.raises(ValueError, match="mix is on cpu"):
        torch.ops.fastmim.dynamic_align(hidden, mix.cpu(), weight, bias)
    with pytest.raises(TypeError, match="hidden must be float32/bfloat16/float16 on CUDA"):
        torch.ops.fastmim.dynamic_align(hidden.double(), mix, weight.double(), bias.double())


@pytest.mark.cuda
def test_cuda_opcheck():
    args = [a.clone().requires_grad_() for a in make(SHAPES["D=13"], torch.float32, "cuda")]
    torch.library.opcheck(torch.ops.fastmim.dynamic_align.default, tuple(args))
