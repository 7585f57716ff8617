"""The peak matrix-product rate MFU is measured against: the vendor's dense bf16 figure for known GPUs, a
measured one on the CPU (a square product through F.linear in the training dtype, best of a few)."""
from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by a substring of torch.cuda.get_device_name.
GPU_BF16_PEAKS = (
    ("GB200", 2.5e15), ("B200", 2.25e15), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("RTX 5090", 209.5e12),
    ("RTX 4090", 165.2e12),
)


def known_gpu_peak(name: str) -> float | None:
    return next((peak for key, peak in GPU_BF16_PEAKS if key in name), None)


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of a square product in `dtype`, through F.linear (the GEMM the model's linears call; on CPUs
    without native bf16 a bf16 `a @ b` takes a far slower path than a bf16 linear): the machine's practical
    peak."""
    size = size or (8192 if device.type == "cuda" else 2048)
    generator = torch.Generator().manual_seed(0)  # its own: the training's random state is not touched
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        F.linear(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


@functools.cache
def _cpu_peak(dtype: torch.dtype) -> float:
    return measure_peak_flops(torch.device("cpu"), dtype, size=1024, repeats=3)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Per device, for MFU: a GPU's known bf16 peak (None for an unknown GPU or fp32 on a GPU), the CPU's
    measured rate in the training precision (a fraction of a second, once per process)."""
    if device.type == "cuda":
        return known_gpu_peak(torch.cuda.get_device_name(device)) if precision == "bf16" else None
    return _cpu_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
