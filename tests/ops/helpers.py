"""Shared pieces of the ops tests: input builders, the precision rule, and the kernels under test.

The op test grids run against one set of kernels, chosen by FASTMIM_TEST_KERNELS:
- `cpu` (default): fastmim._C's CPU kernels;
- `emulated`: the CUDA kernel bodies of csrc/cuda/*.cu compiled for the CPU against the SIMT emulation, with
  ASan and UBSan (the library named by FASTMIM_EMULATED_LIBRARY, in a process that preloaded the ASan
  runtime; tests/emulation/test_op_grids.py runs them so). Tests marked `cpu_kernels` (float64 gradcheck,
  the CPU kernels' own behaviour) are not part of that run.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from fastmim import ops
from fastmim.ops import _backend, _extension, selfcheck

KERNELS = os.environ.get("FASTMIM_TEST_KERNELS", "cpu")
EMULATED = KERNELS == "emulated"

LOW_PRECISIONS = (torch.float32, torch.bfloat16, torch.float16)
ROW_NORMS = ("layernorm", "l2", "none")
LOSSES = ("smooth_l1", "l2", "l1", "cosine")


@functools.cache
def _emulated():
    library = os.environ.get("FASTMIM_EMULATED_LIBRARY")
    assert library, "FASTMIM_TEST_KERNELS=emulated needs FASTMIM_EMULATED_LIBRARY (tests/emulation/build.py)"
    torch.ops.load_library(library)
    return _backend.register_library("fastmim_emulated")


def fused():
    """The fused implementations under test; a test that needs them fails (not skips) when they are missing."""
    if EMULATED:
        return _emulated()
    namespace = ops.fused_ops()
    assert namespace is not None, f"fastmim._C is not built: {_extension.load_error()}"
    return namespace


def raw_ops():
    """The operators under test: torch.ops.fastmim, or torch.ops.fastmim_emulated."""
    if EMULATED:
        _emulated()
        return torch.ops.fastmim_emulated
    fused()
    return torch.ops.fastmim


def op_name(name: str) -> str:
    return f"{'fastmim_emulated' if EMULATED else 'fastmim'}::{name}"


def check_device_errors() -> None:
    """Where the kernels under test report bad index values: at once on the CPU kernels, through the device
    error flag for the CUDA kernel bodies."""
    if EMULATED:
        raw_ops().check_device_errors(torch.empty(0))


def at_odd_offset(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t that starts one element into its storage: aligned to the element, not to 16 bytes."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = storage[1:].view(t.shape)
    view.copy_(t)
    return view


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


def assert_precision_rule(kernel, reference_same_precision, exact, factor: float, name: str = "output") -> None:
    """DESIGN §7: the kernel's error against the float64 result is at most `factor` (2 for outputs, 3 for
    gradients) times the error of the reference computed in the same precision, plus a few units of the
    last place of float32 (for float32 results that are exact up to summation order). The rule is
    fastmim.ops.selfcheck's, which `python -m fastmim.doctor` applies on a GPU."""
    assert kernel.shape == exact.shape, f"{name}: shape {tuple(kernel.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(kernel.double()).all(), f"{name}: not finite"
    ok, err, ref_err = selfcheck.within_rule(kernel, reference_same_precision, exact, factor)
    assert ok, f"{name}: kernel error {err:.3e} > {factor} × reference error {ref_err:.3e} (+ a few ulps)"


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
