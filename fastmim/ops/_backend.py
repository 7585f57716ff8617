"""Which implementation `fastmim.ops.*` runs: the compiled kernels (`fastmim._C`) or the references.

Mode `auto` uses the kernels when the extension is built (and warns once, falling back to the references,
when it is not), `fused` insists on them, `reference` forces the references. The environment variable
FASTMIM_KERNELS sets the starting mode; the trainer's --kernels flag calls `set_kernels`.
"""
from __future__ import annotations

import functools
import os
import warnings
from types import SimpleNamespace

from . import _extension, reference
from . import align_loss as _align_loss
from . import dynamic_align as _dynamic_align
from . import masked_patch_embed as _masked_patch_embed

MODES = ("auto", "fused", "reference")
_fused: list = []   # [namespace or None] once loaded
_warned: list = []


def _check_mode(mode: str, source: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{source} must be one of {MODES}, got {mode!r}")
    return mode


_mode = _check_mode(os.environ.get("FASTMIM_KERNELS", "auto"), "FASTMIM_KERNELS")


def fused_ops():
    """The fused implementations, or None when `fastmim._C` is not built. The first call loads the extension
    and registers each op's fake kernel, autograd formula and autocast rule (in the op's own file)."""
    if not _fused:
        namespace = None
        if _extension.load():
            for module in (_masked_patch_embed, _align_loss, _dynamic_align):
                module.register_fused()
            namespace = SimpleNamespace(masked_patch_embed=_masked_patch_embed.masked_patch_embed_fused,
                                        align_loss=_align_loss.align_loss_fused,
                                        dynamic_align=_dynamic_align.dynamic_align_fused)
        _fused.append(namespace)
    return _fused[0]


def set_kernels(mode: str) -> None:
    global _mode
    _check_mode(mode, "kernels")
    if mode == "fused" and fused_ops() is None:
        raise RuntimeError(
            "kernels='fused' needs the compiled extension fastmim._C, which is not built in this install "
            f"({_extension.load_error()}); rebuild with `pip install -e . --no-build-isolation` or use "
            "kernels='auto'/'reference'"
        )
    _mode = mode


def kernels_mode() -> str:
    return _mode


def implementation(name: str):
    if _mode == "reference":
        return getattr(reference, name)
    fused = fused_ops()
    if fused is not None:
        if _mode == "auto" and not _extension.has_cuda_kernels():
            return functools.partial(_by_device, name)
        return getattr(fused, name)
    if _mode == "fused":
        set_kernels("fused")  # raises, saying why
    _warn_once(f"the compiled kernels are not available ({_extension.load_error()})")
    return getattr(reference, name)


def _by_device(name: str, first, *args):
    """Mode auto with an extension built without CUDA kernels: CUDA tensors go to the reference."""
    if first.is_cuda:
        _warn_once("fastmim._C was built without its CUDA kernels (no nvcc at build time)")
        return getattr(reference, name)(first, *args)
    return getattr(fused_ops(), name)(first, *args)


def _warn_once(why: str) -> None:
    if not _warned:
        _warned.append(True)
        warnings.warn(f"fastmim.ops: {why}; running the PyTorch references "
                      "(set FASTMIM_KERNELS=reference to silence this)", RuntimeWarning, stacklevel=4)
