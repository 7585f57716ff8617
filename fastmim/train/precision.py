"""Training precision: bf16 autocast or fp32, and whether this machine runs bf16 matrix products natively."""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 or AMX). Without them bf16 products
    are emulated; measured on a 2-core AVX2 machine: a CLIP-B/16 forward 6× slower than in fp32, and a
    2048² bf16 `a @ b` at 0.16 GFLOP/s against ~30–60 GFLOP/s in fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: do not second-guess the user
        return True


def warn_if_slow_bf16(precision: str, device: torch.device, setting: str) -> None:
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn(f"{setting}=bf16 on a CPU without native bf16 matrix products (no AVX-512 BF16 or AMX): "
                      "they are emulated, several times (some hundreds of times) slower than fp32; use "
                      f"{setting}=fp32 on this machine", RuntimeWarning, stacklevel=3)


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on CUDA, fp32 on the CPU."""
    if name not in PRECISIONS:
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    warn_if_slow_bf16(name, device, "train.precision")
    return name


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast (no GradScaler needed: bf16 has fp32's range), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
