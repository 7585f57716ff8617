"""Input validation shared by the ops. Every message names the offending argument, so a user calling
an op from their own project learns what to fix without reading our code."""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def check_tensor(name: str, t, ndim: int | None = None, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float64/float32/bfloat16/float16, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    """`expected` may hold None for dimensions that are free."""
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


def check_same_device(reference_name: str, reference: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on {reference.device}")


def check_indices(name: str, ids: torch.Tensor, upper: int) -> None:
    """int64 indices in [0, upper). On the CPU a bad value raises IndexError naming the argument. On a GPU a
    host-side check would synchronize every step and a device assertion would kill the CUDA context, so the
    kernels (and the references, through `guarded_indices`) record bad values on the device instead and
    `fastmim.ops.check_device_errors` reports them; inside torch.compile the value check is the kernels'."""
    check_tensor(name, ids, ndim=2, floating=False)
    if ids.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {ids.dtype}")
    if ids.numel() == 0 or ids.device.type != "cpu" or torch.compiler.is_compiling():
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= upper:
        raise IndexError(f"{name} holds values outside [0, {upper}): min {low}, max {high}")


_REFERENCE_MESSAGES = ("masked_patch_embed (reference): ids_keep holds values outside [0, N)",
                       "align_loss (reference): rows holds values outside [0, N)",
                       "masked_pixel_loss (reference): ids holds values outside [0, N)")
_reference_errors: dict = {}  # device → one flag per message, on that device


def guarded_indices(op: str, name: str, ids: torch.Tensor, upper: int) -> torch.Tensor:
    """For a reference on a GPU: records whether `ids` leaves [0, upper) (no synchronization) and returns it
    clamped into range, so that torch's own indexing never asserts on the device. Elsewhere `ids` as is."""
    if ids.device.type != "cuda" or ids.numel() == 0 or torch.compiler.is_compiling():
        return ids
    if not is_fake(ids):  # fake tensors (the dry run) hold no values, and a flag made from them must not be kept
        _record(_REFERENCE_MESSAGES.index(f"{op} (reference): {name} holds values outside [0, N)"),
                (ids < 0) | (ids >= upper))
    return ids.clamp(0, upper - 1)


def _record(slot: int, bad: torch.Tensor) -> None:
    flags = _reference_errors.get(bad.device)
    if flags is None:  # made once (setdefault would build its default, a fill on the device, at every call)
        flags = _reference_errors[bad.device] = torch.zeros(len(_REFERENCE_MESSAGES), dtype=torch.bool,
                                                            device=bad.device)
    flags[slot] |= bad.any()


def raise_reference_errors(device: torch.device) -> None:
    flags = _reference_errors.get(torch.device(device))
    if flags is None:
        return
    found = flags.nonzero().flatten().tolist()  # the synchronization
    if found:
        flags.zero_()
        raise IndexError("; ".join(_REFERENCE_MESSAGES[i] for i in found) + f" (found on {device})")


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
