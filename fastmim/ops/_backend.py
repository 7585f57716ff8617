"""Which implementation `fastmim.ops.*` runs: the compiled kernels (`fastmim._C`) or the references.

Mode `auto` uses the kernels when the extension is built, `fused` insists on them, `reference` forces the
references. The environment variable FASTMIM_KERNELS sets the starting mode; the trainer's --kernels
flag calls `set_kernels`.
"""
from __future__ import annotations

import os

from . import reference

MODES = ("auto", "fused", "reference")
_mode = os.environ.get("FASTMIM_KERNELS", "auto")


def fused_ops():
    """The fused implementations, or None when `fastmim._C` is not built."""
    return None


def set_kernels(mode: str) -> None:
    global _mode
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {MODES}, got {mode!r}")
    if mode == "fused" and fused_ops() is None:
        raise RuntimeError(
            "kernels='fused' needs the compiled extension fastmim._C, which is not built in this install; "
            "rebuild with `pip install -e . --no-build-isolation` or use kernels='auto'/'reference'"
        )
    _mode = mode


def kernels_mode() -> str:
    return _mode


def implementation(name: str):
    fused = fused_ops() if _mode != "reference" else None
    return getattr(fused if fused is not None else reference, name)
