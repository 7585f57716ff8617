"""Loading the compiled operators `fastmim._C`: importing it registers `torch.ops.fastmim.*` (schemas, CPU and
CUDA kernels). The ops may also have been registered by the CMake-built library (`torch.ops.load_library`),
in which case they are used as they are."""
from __future__ import annotations

import torch

OPS = ("masked_patch_embed", "align_loss", "dynamic_align")
_state: dict = {}


def _registered() -> bool:
    try:
        return all(hasattr(torch.ops.fastmim, name) for name in OPS)
    except (AttributeError, RuntimeError):
        return False


def load() -> bool:
    """Whether the compiled operators are available (tries `import fastmim._C` once)."""
    if "ok" not in _state:
        if _registered():
            _state["ok"] = True
        else:
            try:
                import fastmim._C  # noqa: F401  (static registrations run on import)
                _state["ok"] = _registered()
            except ImportError as error:
                _state["ok"], _state["error"] = False, error
    return _state["ok"]


def load_error() -> str:
    error = _state.get("error")
    return f"{type(error).__name__}: {error}" if error else "fastmim._C is not built"


def has_cuda_kernels() -> bool:
    if "cuda" not in _state:
        _state["cuda"] = load() and all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmim::{name}", "CUDA")
                                        for name in OPS)
    return _state["cuda"]
