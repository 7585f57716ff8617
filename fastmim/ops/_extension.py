"""Loading the compiled operators `fastmim._C`: importing it registers `torch.ops.fastmim.*` (schemas, CPU and
CUDA kernels). The ops may also have been registered by the CMake-built library (`torch.ops.load_library`),
in which case they are used as they are."""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

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
    PTX, 0 when the library holds no code for the device's architecture (or no CUDA kernels at all), or when no
    GPU is there to ask."""
    versions = _state.setdefault("versions", {})
    index = torch.device(device).index
    index = (torch.cuda.current_device() if torch.cuda.is_available() else 0) if index is None else index
    if index not in versions:
        versions[index] = _ask_gpu(index)
    return versions[index]


def _ask_gpu(index: int) -> int:
    """kernel_version's host query, made once per GPU."""
    ok = has_cuda_kernels() and torch._C._dispatch_has_kernel_for_dispatch_key("fastmim::cuda_kernel_version", "CUDA")
    if not ok or index >= torch.cuda.device_count():
        return 0
    # The answer is the real GPU's, so ask it outside any fake-tensor trace: the op call that first needs it may
    # run on fake CUDA tensors (the dry run, tests/fake_cuda), where this operator has no fake kernel.
    with unset_fake_temporarily():
        return int(torch.ops.fastmim.cuda_kernel_version(torch.empty(0, device=f"cuda:{index}")))


def has_gpu(device: torch.device) -> bool:
    """Whether a real GPU stands behind the CUDA device `device` (not so for fake CUDA tensors on a machine
    without one)."""
    index = torch.device(device).index or 0
    return index < torch.cuda.device_count()


def runs_on(device: torch.device) -> bool:
    """Whether the compiled kernels can run on `device`: always on the CPU; on a GPU when the library holds
    SASS for its architecture family or PTX the driver can compile for it. A CUDA device with no GPU behind it
    (fake tensors, as in the dry run of tests/fake_cuda) has no architecture to check: there the library's CUDA
    kernels are taken — their fake implementations describe them — when it was built with them."""
    device = torch.device(device)
    if device.type == "cpu" or kernel_version(device) != 0:
        return True
    return has_cuda_kernels() and not has_gpu(device)


def why_not(device: torch.device) -> str:
    if not has_cuda_kernels():
        return "fastmim._C was built without its CUDA kernels (no nvcc at build time)"
    major, minor = torch.cuda.get_device_capability(device)
    return (f"fastmim._C holds no code for {torch.cuda.get_device_name(device)} (compute capability "
            f"{major}.{minor}); rebuild with TORCH_CUDA_ARCH_LIST including {major}.{minor}")
