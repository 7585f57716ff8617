"""Every fused op against its reference on a device: a small grid, forward and backward, judged by the
precision rule (the kernel's error against a float64 computation is at most 2× — 3× for gradients — the
error of the reference computed in the same precision, plus a few float32 ulps). `python -m fastmim.doctor`
prints the result; the trainer runs it once at start on a GPU (milliseconds), where the kernels never ran
before, so that a broken build or driver is caught before it trains on wrong numbers."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import reference
from ._backend import fused_ops


class KernelMismatchError(RuntimeError):
    """The fused kernels disagree with the references on this device."""


@dataclass
class Check:
    op: str
    dtype: torch.dtype
    value: str              # "out", "grad images", …
    error: float            # max |kernel − float64|
    reference_error: float  # max |reference in dtype − float64|
    ok: bool


def max_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return (value.double().cpu() - exact.double().cpu()).abs().max().item() if value.numel() else 0.0


def within_rule(kernel: torch.Tensor, reference_same_precision: torch.Tensor, exact: torch.Tensor,
                factor: float) -> tuple[bool, float, float]:
    """(ok, kernel error, reference error) under the precision rule."""
    if kernel.shape != exact.shape or not torch.isfinite(kernel.double()).all():
        return False, float("inf"), max_error(reference_same_precision, exact)
    err, ref_err = max_error(kernel, exact), max_error(reference_same_precision, exact)
    floor = 4 * torch.finfo(torch.float32).eps * max(exact.abs().max().item(), 1e-3) if exact.numel() else 0.0
    return err <= factor * ref_err + floor, err, ref_err


def _cases(device: torch.device, dtype: torch.dtype, generator: torch.Generator):
    """(name, function name, inputs, which inputs want gradients, value names) per op."""
    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device, dtype)

    def ids(batch, n, k):
        return torch.rand(batch, n, generator=generator).argsort(dim=1)[:, :k].to(device)

    def rows(batch, n, k):  # CLS and k - 1 kept patches of n
        return torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device), ids(batch, n, k - 1) + 1], dim=1)

    yield ("masked_patch_embed", [randn(2, 3, 32, 48), ids(2, 6, 3), randn(24, 3, 16, 16, scale=1 / 16), randn(24),
                                  randn(6, 24)], [True, False, True, True, True],
           ["images", "weight", "bias", "pos_embed"])
    yield ("dynamic_align", [randn(4, 2, 5, 40), randn(2, 4, scale=0.25), randn(2, 24, 40, scale=0.15), randn(2, 24)],
           [True, True, True, True], ["hidden", "mix", "head_weight", "head_bias"])
    yield ("align_loss", [randn(2, 2, 5, 32), randn(2, 2, 13, 32, scale=1.5), rows(2, 12, 5)], [True, False, False],
           ["pred"])
    yield ("masked_pixel_loss", [randn(2, 3, 768), randn(2, 3, 32, 48), ids(2, 6, 3), 16], [True, False, False, False],
           ["pred"])


def _run(fn, inputs, wants):
    leaves = [x.detach().clone().requires_grad_(w) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
              for x, w in zip(inputs, wants)]
    out = fn(*leaves)
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).reshape(out.shape).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, [x for x, w in zip(leaves, wants) if w], grad_out)
    return [out.detach(), *grads]


def check_ops(device, dtypes=(torch.float32, torch.bfloat16), seed: int = 0) -> list[Check]:
    """Each fused op in each dtype on `device`, forward and backward, against the references."""
    fused = fused_ops()
    if fused is None:
        raise KernelMismatchError("fastmim._C is not built: there are no fused kernels to check")
    device = torch.device(device)
    checks = []
    for dtype in dtypes:
        generator = torch.Generator().manual_seed(seed)
        for name, inputs, wants, grad_names in _cases(device, dtype, generator):
            exact_inputs = [(x.cpu().double() if x.is_floating_point() else x.cpu()) if isinstance(x, torch.Tensor)
                            else x for x in inputs]
            exact = _run(getattr(reference, name), exact_inputs, wants)
            same_precision = _run(getattr(reference, name), inputs, wants)
            kernel = _run(getattr(fused, name), inputs, wants)
            for value, k, r, e in zip(["out", *(f"grad {g}" for g in grad_names)], kernel, same_precision, exact):
                ok, err, ref_err = within_rule(k, r, e, 2 if value == "out" else 3)
                checks.append(Check(name, dtype, value, err, ref_err, ok))
    checks.append(check_block_mask(device))
    return checks


def check_block_mask(device: torch.device, batch: int = 512) -> Check:
    """block_mask on `device` against the CPU kernel for the same seed: every sample a partition of the patches
    with exactly M masked, and the same masks but for a rare rectangle whose side rounds the other way under the
    GPU's fast-math (`error`: the share of samples that differ; at most 1 %)."""
    seed, masked = torch.tensor([20240611]), 78
    keep, ids = torch.ops.fastmim.block_mask(seed.to(device), batch, 14, 14, masked)
    _, ids_cpu = torch.ops.fastmim.block_mask(seed, batch, 14, 14, masked)
    everything = torch.cat([keep, ids], dim=1).sort(dim=1).values.cpu()
    partition = ids.shape == (batch, masked) and torch.equal(everything, torch.arange(196).expand(batch, -1))
    differ = (ids.cpu() != ids_cpu).any(dim=1).double().mean().item()
    return Check("block_mask", torch.int64, "masks", differ, 0.0, partition and differ <= 0.01)


def failures(checks: list[Check]) -> list[str]:
    return [f"{c.op} {str(c.dtype).replace('torch.', '')} {c.value}: error {c.error:.2e} against the reference's "
            f"{c.reference_error:.2e}" for c in checks if not c.ok]
