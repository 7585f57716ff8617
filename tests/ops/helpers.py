"""Shared pieces of the ops tests: input builders, the precision rule of DESIGN §7, and the extension guard."""
from __future__ import annotations

import os

import pytest
import torch

from fastmim import ops
from fastmim.ops import _extension

LOW_PRECISIONS = (torch.float32, torch.bfloat16, torch.float16)
ROW_NORMS = ("layernorm", "l2", "none")
LOSSES = ("smooth_l1", "l2", "l1", "cosine")


def fused():
    """The fused implementations; a test that needs them fails (not skips) when fastmim._C is not built."""
    namespace = ops.fused_ops()
    assert namespace is not None, f"fastmim._C is not built: {_extension.load_error()}"
    return namespace


def cuda_toolkit_present() -> bool:
    """Whether setup.py would have found a real nvcc (and so must have built the CUDA kernels)."""
    if torch.version.cuda is None or os.environ.get("FASTMIM_CUDA", "1") == "0":
        return False
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in filter(None, homes):
        try:
            with open(os.path.join(home, "bin", "nvcc"), "rb") as f:
                if f.read(4) == b"\x7fELF":
                    return True
        except OSError:
            pass
    return False


def ids(batch: int, n: int, k: int, device="cpu", generator=None) -> torch.Tensor:
    """Distinct random indices per sample, as the masking draws them."""
    noise = torch.rand(batch, n, generator=generator)
    return noise.argsort(dim=1)[:, :k].to(device)


def max_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return (value.double() - exact.double()).abs().max().item() if value.numel() else 0.0


def assert_precision_rule(kernel, reference_same_precision, exact, factor: float, name: str = "output") -> None:
    """DESIGN §7: the kernel's error against the float64 result is at most `factor` (2 for outputs, 3 for
    gradients) times the error of the reference computed in the same precision, plus a few units of the
    last place of float32 (for float32 results that are exact up to summation order)."""
    assert kernel.shape == exact.shape, f"{name}: shape {tuple(kernel.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(kernel.double()).all(), f"{name}: not finite"
    err, ref_err = max_error(kernel, exact), max_error(reference_same_precision, exact)
    floor = 4 * torch.finfo(torch.float32).eps * max(exact.abs().max().item(), 1e-3) if exact.numel() else 0.0
    assert err <= factor * ref_err + floor, (
        f"{name}: kernel error {err:.3e} > {factor} × reference error {ref_err:.3e} (+{floor:.1e})")


def cast_tree(values, dtype):
    return [v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in values]


def leaves(values, requires_grad):
    """Detached copies, with requires_grad where asked (a bool per value)."""
    out = []
    for v, grad in zip(values, requires_grad):
        if isinstance(v, torch.Tensor):
            v = v.detach().clone().requires_grad_(bool(grad) and v.is_floating_point())
        out.append(v)
    return out


def run_with_grads(fn, values, requires_grad, grad_output=None):
    """fn(*values) and the gradients of <out, grad_output> for the values that require grad."""
    inputs = leaves(values, requires_grad)
    out = fn(*inputs)
    grad_output = torch.ones_like(out) if grad_output is None else grad_output.to(out.dtype)
    wanted = [v for v in inputs if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = torch.autograd.grad(out, wanted, grad_output) if wanted else ()
    return out.detach(), list(grads)


def skip_without_cuda():
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
