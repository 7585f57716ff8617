"""Which implementation `fastmim.ops.*` runs: the compiled kernels (`fastmim._C`) or the references.

Mode `auto` uses the kernels where they can run: on CPU tensors when the extension is built, on a GPU when
the library holds code for its architecture; elsewhere it warns once and runs the references. `fused`
insists on the kernels (an error where they cannot run), `reference` forces the references. The question
"does the library hold code for this GPU" is asked of the GPU once, outside any fake-tensor trace; fake CUDA
tensors with no GPU behind them (tests/fake_cuda) take the kernels, i.e. their fake implementations. The
environment variable FASTMIM_KERNELS sets the starting mode; the trainer's --kernels flag calls
`set_kernels`.
"""
from __future__ import annotations

import functools
import os
import warnings
from types import SimpleNamespace

import torch

from . import _extension, reference
from . import align_loss as _align_loss
from . import block_mask as _block_mask
from . import dynamic_align as _dynamic_align
from . import masked_patch_embed as _masked_patch_embed
from . import masked_pixel_loss as _masked_pixel_loss

MODES = ("auto", "fused", "reference")
OP_MODULES = {"masked_patch_embed": _masked_patch_embed, "align_loss": _align_loss, "dynamic_align": _dynamic_align,
              "masked_pixel_loss": _masked_pixel_loss, "block_mask": _block_mask}
_fused: list = []   # [namespace or None] once loaded
_warned: list = []


def _check_mode(mode: str, source: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{source} must be one of {MODES}, got {mode!r}")
    return mode


_mode = _check_mode(os.environ.get("FASTMIM_KERNELS", "auto"), "FASTMIM_KERNELS")


def register_library(library: str) -> SimpleNamespace:
    """Register every op's fake kernel, autograd formula and autocast rule for `library` (in each op's own
    file) and return the functions that call its operators."""
    return SimpleNamespace(**{name: module.register_fused(library) for name, module in OP_MODULES.items()})


def fused_ops():
    """The fused implementations, or None when `fastmim._C` is not built (the first call loads it)."""
    if not _fused:
        _fused.append(register_library("fastmim") if _extension.load() else None)
    return _fused[0]


def set_kernels(mode: str) -> None:
    global _mode
    _check_mode(mode, "kernels")
    if mode == "fused" and fused_ops() is None:
        raise RuntimeError(
            "kernels='fused' needs the compiled extension fastmim._C, which cannot be used in this install "
            f"({_extension.load_error()}); build it with `pip install -e . --no-build-isolation` or use "
            "kernels='auto'/'reference'"
        )
    _mode = mode


def kernels_mode() -> str:
    return _mode


def implementation(name: str, device=None):
    """The function computing op `name`: for the inputs' device when they are tensors, or for `device`."""
    if _mode == "reference":
        return getattr(reference, name)
    fused = fused_ops()
    if fused is None:
        if _mode == "fused":
            set_kernels("fused")  # raises, saying why
        _warn_once(f"the compiled kernels are not available ({_extension.load_error()})")
        return getattr(reference, name)
    if device is not None:
        return _on_device(name, torch.device(device))
    return functools.partial(_by_device, name)


def _by_device(name: str, first, *args):
    return _on_device(name, first.device)(first, *args)


def _on_device(name: str, device: torch.device):
    """The kernels where they can run on `device`; elsewhere the reference (auto) or an error (fused)."""
    if device.type == "cuda" and not _extension.runs_on(device):
        if _mode == "fused":
            raise RuntimeError(f"kernels='fused': {_extension.why_not(device)}")
        _warn_once(_extension.why_not(device))
        return getattr(reference, name)
    return getattr(fused_ops(), name)


def _warn_once(why: str) -> None:
    if not _warned:
        _warned.append(True)
        warnings.warn(f"fastmim.ops: {why}; running the PyTorch references "
                      "(set FASTMIM_KERNELS=reference to silence this)", RuntimeWarning, stacklevel=4)


def check_device_errors(device) -> None:
    """Raise IndexError naming the op and argument if an op found an out-of-range index on `device` (a CUDA
    GPU) since the last call, and clear the record. It synchronizes with the device: call it where the host
    waits anyway. On the CPU the ops raise at once, so there is nothing to check."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    from ._checks import raise_reference_errors

    raise_reference_errors(device)
    if fused_ops() is not None and _extension.has_cuda_kernels():
        torch.ops.fastmim.check_device_errors(torch.empty(0, device=device))
