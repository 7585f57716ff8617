"""fastmim._C align_loss against the reference: gradcheck in float64, the precision rule in
float32/bfloat16/float16 (pred and target dtypes may differ), awkward shapes, any target rows (CLS + kept,
repeated, no CLS), errors naming the argument, opcheck, and the same on CUDA."""
from __future__ import annotations

import itertools

import pytest
import torch

from fastmim.ops import cls_and_kept_rows, reference

from .helpers import (EMULATED, LOSSES, LOW_PRECISIONS, ROW_NORMS, assert_precision_rule, at_odd_offset,
                      check_device_errors, fused, ids, raw_ops, run_with_grads)

# (levels, batch, K, N, D): D not a multiple of 8, K = 1, B = 1.
SHAPES = {"base": (3, 2, 5, 12, 32), "D=13": (2, 3, 4, 9, 13), "K=1": (2, 2, 1, 6, 16), "B=1": (4, 1, 3, 7, 24)}
OPTIONS = list(itertools.product(LOSSES, ROW_NORMS, ("none", "layernorm", "l2")))


def make(shape, pred_dtype=torch.float64, target_dtype=None, device="cpu", seed=0, noncontiguous=False,
         odd_offset=False):
    levels, batch, k, n, dim = shape
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(levels, batch, 1 + k, dim, generator=g, dtype=torch.float64)
    target = 1.5 * torch.randn(levels, batch, 1 + n, dim, generator=g, dtype=torch.float64) + 0.3
    keep = cls_and_kept_rows(ids(batch, n, k, generator=g))  # the target rows: CLS, then the kept patches
    if noncontiguous:  # a strided view into a larger teacher tensor, a transposed prediction, strided rows
        target = torch.cat([target, target], dim=2)[:, :, ::2]
        pred = pred.transpose(0, 1).contiguous().transpose(0, 1)
        keep = keep.repeat_interleave(2, dim=1)[:, ::2]
    pred, target = pred.to(pred_dtype).to(device), target.to(target_dtype or pred_dtype).to(device)
    if odd_offset:  # contiguous, but one element into their storage: no 16-byte alignment
        pred, target = at_odd_offset(pred), at_odd_offset(target)
    return pred, target, keep.to(device)


def check_against_reference(shape, pred_dtype, target_dtype=None, device="cpu",
                            options=("smooth_l1", "layernorm", "none"), noncontiguous=False, beta=1.0, eps=1e-5,
                            odd_offset=False):
    pred, target, keep = make(shape, pred_dtype, target_dtype, device, noncontiguous=noncontiguous,
                              odd_offset=odd_offset)
    loss, target_norm, pred_norm = options
    grad = torch.rand(shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5

    def call(fn):
        return lambda p, t: fn(p, t, keep.to(p.device), loss, target_norm, pred_norm, beta, eps)

    exact, (exact_grad,) = run_with_grads(call(reference.align_loss), [pred.double().cpu(), target.double().cpu()],
                                          [True, False], grad)
    ref, (ref_grad,) = run_with_grads(call(reference.align_loss), [pred, target], [True, False], grad.to(device))
    out, (out_grad,) = run_with_grads(call(fused().align_loss), [pred, target], [True, False], grad.to(device))
    assert out.dtype == torch.float32 and out_grad.dtype == pred.dtype
    assert_precision_rule(out.cpu(), ref.cpu(), exact, 2, "loss")
    assert_precision_rule(out_grad.cpu(), ref_grad.cpu(), exact_grad, 3, "grad pred")


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("loss,target_norm,pred_norm", OPTIONS)
def test_gradcheck_float64(loss, target_norm, pred_norm):
    pred, target, keep = make((2, 2, 3, 7, 6))
    pred.requires_grad_()
    fn = fused().align_loss
    out = fn(pred, target, keep, loss, target_norm, pred_norm)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference.align_loss(pred, target, keep, loss, target_norm, pred_norm))
    assert torch.autograd.gradcheck(lambda p: fn(p, target, keep, loss, target_norm, pred_norm), (pred,))


@pytest.mark.cpu_kernels
@pytest.mark.parametrize("beta", [0.0, 0.25, 3.0])
def test_smooth_l1_beta_float64(beta):
    pred, target, keep = make((2, 2, 3, 7, 6))
    fn = fused().align_loss
    torch.testing.assert_close(fn(pred, target, keep, "smooth_l1", "none", beta=beta),
                               reference.align_loss(pred, target, keep, "smooth_l1", "none", beta=beta))


@pytest.mark.parametrize("beta", [0.0, 0.25, 3.0])
def test_smooth_l1_beta(beta):
    check_against_reference((2, 2, 3, 7, 6), torch.float32, beta=beta)
    check_against_reference((2, 2, 3, 7, 6), torch.bfloat16, beta=beta)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_eps(eps):
    check_against_reference((2, 2, 3, 7, 6), torch.float32, options=("l2", "layernorm", "layernorm"), eps=eps)


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(shape, dtype):
    check_against_reference(shape, dtype)


@pytest.mark.parametrize("options", OPTIONS, ids=["-".join(o) for o in OPTIONS])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_every_loss_and_norm(options, dtype):
    check_against_reference(SHAPES["D=13"], dtype, options=options)


@pytest.mark.parametrize("pred_dtype,target_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                                     (torch.float16, torch.bfloat16)], ids=str)
def test_mixed_pred_and_target_dtypes(pred_dtype, target_dtype):
    check_against_reference(SHAPES["base"], pred_dtype, target_dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_noncontiguous_inputs(dtype):
    check_against_reference(SHAPES["base"], dtype, noncontiguous=True)


ROWS = {  # [B, R] target rows, R = 4, of a 10-row target
    "masked patches, no CLS": [[3, 7, 1, 9], [2, 4, 6, 8]],
    "repeated rows": [[0, 5, 5, 5], [9, 9, 0, 0]],
    "one row for all": [[4, 4, 4, 4], [4, 4, 4, 4]],
}


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("rows", ROWS.values(), ids=ROWS.keys())
def test_any_target_rows(rows, dtype):
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(3, 2, 4, 24, generator=g, dtype=torch.float64)
    target = torch.randn(3, 2, 10, 24, generator=g, dtype=torch.float64)
    rows = torch.tensor(rows)
    grad = torch.rand(3, dtype=torch.float64, generator=g) + 0.5
    call = lambda fn: lambda p, t: fn(p, t, rows, "smooth_l1", "layernorm", "layernorm")  # noqa: E731
    exact, (exact_grad,) = run_with_grads(call(reference.align_loss), [pred, target], [True, False], grad)
    low = [pred.to(dtype), target.to(dtype)]
    ref, (ref_grad,) = run_with_grads(call(reference.align_loss), low, [True, False], grad)
    out, (out_grad,) = run_with_grads(call(fused().align_loss), low, [True, False], grad)
    assert_precision_rule(out, ref, exact, 2, "loss")
    assert_precision_rule(out_grad, ref_grad, exact_grad, 3, "grad pred")


def test_rows_are_the_definition():
    """Prediction row j of sample b is compared with target row rows[b, j]: written out for l2 without norms."""
    g = torch.Generator().manual_seed(5)
    pred, target = torch.randn(2, 2, 3, 5, generator=g), torch.randn(2, 2, 6, 5, generator=g)
    rows = torch.tensor([[5, 0, 5], [1, 2, 3]])
    expected = torch.stack([sum(((pred[l, b, j] - target[l, b, rows[b, j]]) ** 2).sum() for b in range(2)
                                for j in range(3)) / (2 * 3 * 5) for l in range(2)])
    torch.testing.assert_close(fused().align_loss(pred, target, rows, "l2", "none"), expected)


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
def test_views_at_odd_storage_offsets(dtype):
    check_against_reference(SHAPES["base"], dtype, odd_offset=True)


@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
def test_backward_of_a_view_at_an_odd_offset(dtype):
    """torch.ops' backward called directly with a contiguous view that is not 16-byte aligned (review F3)."""
    rows = torch.randn(3, 2, 6, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    scale = torch.tensor([0.5, 1.0, 2.0])
    out = raw_ops().align_loss_backward(scale, at_odd_offset(rows), "l1")
    expected = rows.float() * scale[:, None, None, None] / (2 * 6 * 16)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2 if dtype != torch.float32 else 1e-6, atol=0)


def test_backward_keeps_nothing_of_the_teacher():
    pred, target, keep = make(SHAPES["base"], torch.float32)
    pred.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        losses = fused().align_loss(pred, target, keep)
    assert [tuple(t.shape) for t in saved] == [tuple(pred.shape)]  # d(row loss)/d(pred) only
    (grad,) = torch.autograd.grad(losses.sum(), pred)
    (expected,) = torch.autograd.grad(reference.align_loss(pred, target, keep).sum(), pred)
    torch.testing.assert_close(grad, expected)


def test_no_gradient_kept_without_grad():
    pred, target, keep = make(SHAPES["base"], torch.float32)
    losses, grad_rows = raw_ops().align_loss(pred, target, keep, "l2", "layernorm", "none", 1.0, 1e-5, False)
    assert grad_rows.numel() == 0
    torch.testing.assert_close(losses, reference.align_loss(pred, target, keep, "l2"))


BAD = [  # (argument, replacement, exception, words in the message)
    ("pred", lambda a: a["pred"][0], ValueError, "pred must have 4 dimensions"),
    ("pred", lambda a: a["pred"].long(), TypeError, "pred must be float"),
    ("target", lambda a: a["target"][:, :1], ValueError, "target must be"),
    ("target", lambda a: a["target"][..., :-1], ValueError, "target must be"),
    ("target", lambda a: a["target"].int(), TypeError, "target must be float"),
    ("rows", lambda a: a["rows"][:, :-1], ValueError, "rows must be"),
    ("rows", lambda a: a["rows"].float(), TypeError, "rows must be int64"),
    ("rows", lambda a: a["rows"] + 100, IndexError, "rows holds values outside"),
    ("rows", lambda a: -a["rows"] - 1, IndexError, "rows holds values outside"),
    ("loss", lambda a: "huber", ValueError, "loss must be one of"),
    ("target_norm", lambda a: "batchnorm", ValueError, "target_norm must be one of"),
    ("pred_norm", lambda a: "rms", ValueError, "pred_norm must be one of"),
]


@pytest.mark.parametrize("name,replace,error,words", BAD, ids=[b[3] for b in BAD])
@pytest.mark.parametrize("entry", ["fastmim.ops", "torch.ops"])
def test_bad_inputs_name_the_argument(name, replace, error, words, entry):
    pred, target, keep = make(SHAPES["base"], torch.float32)
    args = dict(pred=pred, target=target, rows=keep, loss="smooth_l1", target_norm="layernorm", pred_norm="none")
    args[name] = replace(args)
    with pytest.raises(error, match=words):
        if entry == "fastmim.ops":
            fused().align_loss(**args)
        else:
            raw_ops().align_loss(*args.values(), 1.0, 1e-5, True)
            check_device_errors()  # the CUDA kernels report index values through the device error flag


def test_bad_beta_and_eps():
    pred, target, keep = make(SHAPES["base"], torch.float32)
    with pytest.raises(ValueError, match="beta must be non-negative"):
        raw_ops().align_loss(pred, target, keep, "smooth_l1", "none", "none", -1.0, 1e-5, True)
    with pytest.raises(ValueError, match="eps must be positive"):
        raw_ops().align_loss(pred, target, keep, "smooth_l1", "none", "none", 1.0, 0.0, True)


def test_device_mix_names_the_argument():
    pred, target, keep = make(SHAPES["base"], torch.float32)
    with pytest.raises(ValueError, match="target is on meta but pred is on cpu"):
        fused().align_loss(pred, target.to("meta"), keep)


def test_opcheck():
    pred, target, keep = make(SHAPES["D=13"], torch.float32)
    for options in (("smooth_l1", "layernorm", "none"), ("cosine", "l2", "layernorm")):
        for with_grad in (True, False):  # with_grad=False promises that no gradient will be asked for
            args = (pred.clone().requires_grad_(with_grad), target, keep, *options, 1.0, 1e-5, with_grad)
            torch.library.opcheck(raw_ops().align_loss.default, args)
    rows = torch.randn(pred.shape)
    torch.library.opcheck(raw_ops().align_loss_backward.default, (torch.rand(pred.shape[0]), rows, "l1"))


# --- CUDA ---------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOW_PRECISIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cuda_matches_reference(shape, dtype):
    check_against_reference(shape, dtype, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("options", OPTIONS, ids=["-".join(o) for o in OPTIONS])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_cuda_every_loss_and_norm(options, dtype):
    check_against_reference(SHAPES["base"], dtype, device="cuda", options=options)
    check_against_reference(SHAPES["D=13"], dtype, device="cuda", options=options)


@pytest.mark.cuda
@pytest.mark.parametrize("pred_dtype,target_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)],
                         ids=str)
def test_cuda_mixed_dtypes_and_noncontiguous(pred_dtype, target_dtype):
    check_against_reference(SHAPES["base"], pred_dtype, target_dtype, device="cuda")
    check_against_reference(SHAPES["base"], pred_dtype, target_dtype, device="cuda", noncontiguous=True)


@pytest.mark.cuda
def test_cuda_errors_name_the_argument():
    pred, target, keep = make(SHAPES["base"], torch.float32, device="cuda")
    with pytest.raises(ValueError, match="rows is on cpu"):
        torch.ops.fastmim.align_loss(pred, target, keep.cpu(), "l2", "none", "none", 1.0, 1e-5, True)
    with pytest.raises(TypeError, match="pred must be float32/bfloat16/float16 on CUDA"):
        torch.ops.fastmim.align_loss(pred.double(), target, keep, "l2", "none", "none", 1.0, 1e-5, True)


@pytest.mark.cuda
def test_cuda_cpu_first_argument_is_named_not_a_guard_error():
    """Review F6: the device guard came from the first tensor before the checks ran."""
    pred, target, keep = make(SHAPES["base"], torch.float32, device="cuda")
    with pytest.raises(ValueError, match="target is on cuda:0 but pred is on cpu"):
        torch.ops.fastmim.align_loss(pred.cpu(), target, keep, "l2", "none", "none", 1.0, 1e-5, True)


@pytest.mark.cuda
def test_cuda_out_of_range_ids_are_reported_and_the_context_survives():
    """Review F2: a bad index raised a device assertion that killed the CUDA context."""
    from fastmim import ops

    pred, target, keep = make(SHAPES["base"], torch.float32, device="cuda")
    losses, _ = torch.ops.fastmim.align_loss(pred, target, keep + 100, "l2", "none", "none", 1.0, 1e-5, True)
    assert torch.isnan(losses).all()
    with pytest.raises(IndexError, match="align_loss: rows holds values outside"):
        ops.check_device_errors(pred.device)
    ops.check_device_errors(pred.device)  # cleared
    check_against_reference(SHAPES["base"], torch.float32, device="cuda")  # the context still works


@pytest.mark.cuda
def test_cuda_opcheck():
    pred, target, keep = make(SHAPES["D=13"], torch.float32, device="cuda")
    args = (pred.clone().requires_grad_(), target, keep, "smooth_l1", "layernorm", "none", 1.0, 1e-5, True)
    torch.library.opcheck(torch.ops.fastmim.align_loss.default, args)
