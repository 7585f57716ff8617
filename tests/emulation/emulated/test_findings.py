"""The review's GPU findings, through the CUDA kernel bodies run on the CPU (only in the emulated run of
tests/emulation/test_op_grids.py; FASTMIM_TEST_KERNELS=emulated). Each failed before its fix:
- F2: an out-of-range index was a device assertion (on a GPU: a dead CUDA context); now it is flagged, its rows
  are NaN, nothing is read out of bounds, and check_device_errors names the op and the argument;
- F4: grids past 65535 rows were launched as they were; the kernels now loop over the remainder (shown with
  the emulation's grid limit lowered, so that small inputs cross it);
- F5: float atomics made gradients depend on the order the blocks ran in; they are now the same bit for bit
  whatever the order (the emulation runs blocks in a seeded random order).
"""
from __future__ import annotations

import pytest
import torch

from fastmim.ops import reference
from tests.ops.helpers import EMULATED, assert_precision_rule, cast_tree, fused, raw_ops, run_with_grads

pytestmark = pytest.mark.skipif(not EMULATED, reason="runs against the emulated CUDA kernels only")


@pytest.fixture
def emulation():
    """Restores the emulation's settings after a test changes them."""
    yield raw_ops().configure
    raw_ops().configure(65535, 0)


def patch_inputs(batch=4, kept=60, dim=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 48, generator=g)  # 2 × 3 patches of 16
    keep = torch.randint(0, 6, (batch, kept), generator=g)  # repeats within and across samples
    weight = torch.randn(dim, 3, 16, 16, generator=g) / 16
    return [images, keep, weight, torch.randn(dim, generator=g), torch.randn(6, dim, generator=g)]


def embed_grads(args):
    grad = torch.randn(args[0].shape[0], args[1].shape[1], args[2].shape[0], generator=torch.Generator().manual_seed(1))
    return run_with_grads(fused().masked_patch_embed, args, [True, False, True, True, True], grad)


def align_inputs(levels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 4, 50, 200, generator=g)  # 40,000 columns: three slices of the mix-gradient sum
    return [hidden, torch.randn(levels, 3, generator=g), torch.randn(levels, 8, 200, generator=g) / 14,
            torch.randn(levels, 8, generator=g)]


def align_grads(args):
    return run_with_grads(fused().dynamic_align, args, [True, True, True, True])


# --- F2 -------------------------------------------------------------------------------------------------------

def test_out_of_range_patch_ids_are_flagged_not_read():
    images, keep, weight, bias, pos = patch_inputs(kept=5)
    bad = keep.clone()
    bad[1, 2], bad[3, 0] = 6, -1
    out = raw_ops().masked_patch_embed(images, bad, weight, bias, pos)
    good = reference.masked_patch_embed(images, keep, weight, bias, pos)
    assert torch.isnan(out[1, 2]).all() and torch.isnan(out[3, 0]).all()
    rest = torch.ones(bad.shape, dtype=torch.bool)
    rest[1, 2] = rest[3, 0] = False
    torch.testing.assert_close(out[rest], good[rest])
    with pytest.raises(IndexError, match="masked_patch_embed: ids_keep holds values outside"):
        raw_ops().check_device_errors(torch.empty(0))
    raw_ops().check_device_errors(torch.empty(0))  # the record was cleared
    grad = torch.ones(out.shape)
    raw_ops().masked_patch_embed_backward(grad, images, bad, weight, [True, True, True, True])
    with pytest.raises(IndexError, match="masked_patch_embed: ids_keep"):
        raw_ops().check_device_errors(torch.empty(0))


def test_out_of_range_loss_rows_are_flagged_not_read():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 16, generator=g), torch.randn(2, 3, 9, 16, generator=g)
    rows = torch.tensor([[0, 1, 2, 3], [0, 4, 9, 5], [0, 6, 7, 8]])  # 9 is past the 9 target rows
    losses, grad = raw_ops().align_loss(pred, target, rows, "l2", "layernorm", "none", 1.0, 1e-5, True)
    assert torch.isnan(losses).all()
    assert (grad[:, 1, 2] == 0).all() and (grad[:, 0] != 0).any()
    with pytest.raises(IndexError, match="align_loss: rows holds values outside"):
        raw_ops().check_device_errors(torch.empty(0))


# --- F4 -------------------------------------------------------------------------------------------------------

def test_grids_past_the_row_limit_loop_over_the_remainder(emulation):
    emulation(2, 0)  # gridDim.y ≤ 2: 240 kept rows need 4 bias slices and 240 pos_embed rows
    args = patch_inputs()
    _, grads = embed_grads(args)
    exact_args = cast_tree(args, torch.float64)
    _, exact = run_with_grads(reference.masked_patch_embed, exact_args, [True, False, True, True, True],
                              torch.randn(4, 60, 24, generator=torch.Generator().manual_seed(1)).double())
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)
    args = align_inputs()
    out, grads = align_grads(args)
    exact_out, exact_grads = run_with_grads(reference.dynamic_align, cast_tree(args, torch.float64),
                                            [True, True, True, True])
    torch.testing.assert_close(out.double(), exact_out, rtol=1e-4, atol=1e-4)
    for g, e in zip(grads, exact_grads):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-3)
    pred = torch.randn(5, 2, 3, 8, requires_grad=True)  # five levels: rescale's grid rows loop too
    target, rows = torch.randn(5, 2, 7, 8), torch.tensor([[0, 1, 2], [0, 3, 4]])
    (grad,) = torch.autograd.grad(fused().align_loss(pred, target, rows).sum(), pred)
    (expected,) = torch.autograd.grad(reference.align_loss(pred, target, rows).sum(), pred)
    torch.testing.assert_close(grad, expected)


# --- F5 -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["masked_patch_embed", "dynamic_align"])
def test_gradients_do_not_depend_on_the_block_order(op, emulation):
    args, grads_of = (patch_inputs(), embed_grads) if op == "masked_patch_embed" else (align_inputs(), align_grads)
    results = []
    for seed in (1, 2, 3):
        emulation(65535, seed)
        results.append(grads_of(args)[1])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    exact_args = cast_tree(args, torch.float64)
    ref_fn = reference.masked_patch_embed if op == "masked_patch_embed" else reference.dynamic_align
    wants = [True, False, True, True, True] if op == "masked_patch_embed" else [True, True, True, True]
    grad = None
    if op == "masked_patch_embed":
        grad = torch.randn(4, 60, 24, generator=torch.Generator().manual_seed(1))
    _, ref = run_with_grads(ref_fn, args, wants, grad)
    _, exact = run_with_grads(ref_fn, exact_args, wants, grad.double() if grad is not None else None)
    for g, r, e in zip(results[0], ref, exact):
        assert_precision_rule(g, r, e, 3)
