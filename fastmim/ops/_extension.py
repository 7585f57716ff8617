"""Loading the compiled operators `fastmim._C`: importing it registers `torch.ops.fastmim.*` (schemas, CPU and
CUDA kernels). The ops may also have been registered by the CMake-built library (`torch.ops.load_library`),
in which case they are used as they are."""
from __future__ import annotations

import torch

# Every operator fastmim.ops registers a fake kernel, autograd or autocast rule for: a library that lacks one was
# built from older sources, and registering for an operator that does not exist would fail on import.
OPS = ("masked_patch_embed", "masked_patch_embed_backward", "align_loss", "align_loss_backward", "dynamic_align",
       "dynamic_align_backward", "masked_pixel_loss", "block_mask")
_state: dict = {}


def _missing() -> list[str]:
    try:
        return [name for name in OPS if not hasattr(torch.ops.fastmim, name)]
    except (AttributeError, RuntimeError):
        return list(OPS)


def load() -> bool:
    """Whether the compiled operators are available (tries `import fastmim._C` once)."""
    if "ok" not in _state:
        _state["ok"] = not _missing() or _import()
    return _state["ok"]


def _import() -> bool:
    """Import fastmim._C (its static registrations define the operators); say in _state why it is unusable."""
    try:
        import fastmim._C  # noqa: F401
    except ImportError as error:
        _state["why"] = f"{type(error).__name__}: {error}"
        return False
    missing = _missing()
    if missing:
        _state["why"] = (f"fastmim._C was built from older sources: it lacks "
                         f"{', '.join(f'torch.ops.fastmim.{name}' for name in missing)}; rebuild it")
    return not missing


def load_error() -> str:
    return _state.get("why", "fastmim._C is not built")


def has_cuda_kernels() -> bool:
    """Whether the library was built with its CUDA kernels (nvcc at build time)."""
    if "cuda" not in _state:
        _state["cuda"] = load() and all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmim::{name}", "CUDA")
                                        for name in OPS)
    return _state["cuda"]


def kernel_version(device: torch.device) -> int:
    """The kernels' SASS version on `device` (e.g. 90), -(PTX version) when the driver JIT-compiles them from
    PTX, 0 when the library holds no code for the device's architecture (or no CUDA kernels at all)."""
    versions = _state.setdefault("versions", {})
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in versions:
        ok = has_cuda_kernels() and torch._C._dispatch_has_kernel_for_dispatch_key("fastmim::cuda_kernel_version",
                                                                                   "CUDA")
        like = torch.empty(0, device=f"cuda:{index}") if ok else None
        versions[index] = int(torch.ops.fastmim.cuda_kernel_version(like)) if ok else 0
    return versions[index]


def runs_on(device: torch.device) -> bool:
    """Whether the compiled kernels can run on `device`: always on the CPU; on a GPU when the library holds
    SASS for its architecture family or PTX the driver can compile for it."""
    return torch.device(device).type == "cpu" or kernel_version(device) != 0


def why_not(device: torch.device) -> str:
    if not has_cuda_kernels():
        return "fastmim._C was built without its CUDA kernels (no nvcc at build time)"
    major, minor = torch.cuda.get_device_capability(device)
    return (f"fastmim._C holds no code for {torch.cuda.get_device_name(device)} (compute capability "
            f"{major}.{minor}); rebuild with TORCH_CUDA_ARCH_LIST including {major}.{minor}")
