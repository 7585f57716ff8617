"""Speed and peak memory of each fused op (fastmim._C) against its reference, forward / backward / full
(forward + backward), at MaskAlign ViT-B shapes by default. Variants run interleaved in one process (the order
rotates every round); medians are reported. Writes a CSV with the device and versions on every row.

    python benchmarks/kernels.py                       # CPU or the GPU if there is one, float32
    python benchmarks/kernels.py --device cuda --dtype bfloat16

Variants: `fused` (fastmim._C), `reference` (fastmim.ops.reference); masked_patch_embed also runs
`conv_gather`, the convolution over all N patches followed by the gather of the K kept tokens (what a plain
ViT does before dropping tokens). Ratios are baseline time / variant time (> 1: the variant is faster).

Memory: on a GPU, max allocated over the stage minus what was allocated before it. On the CPU each
(op, variant) is measured in a fresh process of this script with glibc's mmap threshold fixed at 64 KiB, so
every tensor is its own mapping and the resident set follows allocations; the peak is the growth of the
high-water mark over the stage. `kept_mb` is what the forward leaves alive for backward (output included).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import (  # noqa: E402
    UsageError, chosen_device, argument_parser, device_name, entry_point, non_negative, positive, read_status_kb,
)

from fastmim import ops  # noqa: E402
from fastmim.ops import reference  # noqa: E402

STAGES = ("forward", "backward", "full")
BASELINES = {"masked_patch_embed": ("reference", "conv_gather"), "align_loss": ("reference",),
             "dynamic_align": ("reference",), "masked_pixel_loss": ("reference",)}
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    p = argument_parser(__doc__)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--ops", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    p.add_argument("--batch", type=positive, default=16, help="B")
    p.add_argument("--patches", type=positive, default=196, help="N (a square grid)")
    p.add_argument("--kept", type=positive, default=58, help="K")
    p.add_argument("--dim", type=positive, default=768, help="D (student and teacher width)")
    p.add_argument("--levels", type=positive, default=5, help="L, supervised levels")
    p.add_argument("--student-levels", type=positive, default=12, help="S, student levels mixed by DA")
    p.add_argument("--patch-size", type=positive, default=16)
    p.add_argument("--repeats", type=positive, default=15, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=non_negative, default=3)
    p.add_argument("--out", type=Path, help="write the CSV here (default: print only; the committed files in "
                   "benchmarks/results are never overwritten unless named)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    p.add_argument("--probe", nargs=2, metavar=("OP", "VARIANT"), help=argparse.SUPPRESS)  # internal (CPU memory)
    return p.parse_args(argv)


@dataclass
class Case:
    """One variant of one op: `make` builds fresh inputs, `run` computes the output from them."""
    make: Callable[[], list]
    run: Callable[[list], torch.Tensor]


def leaf(t: torch.Tensor, grad: bool) -> torch.Tensor:
    return t.detach().clone().requires_grad_(grad)


def cases(args, device: torch.device, dtype: torch.dtype) -> dict[str, dict[str, Case]]:
    g = torch.Generator().manual_seed(0)
    b, n, k, d, l, s, p = (args.batch, args.patches, args.kept, args.dim, args.levels, args.student_levels,
                           args.patch_size)
    side = int(round(n ** 0.5)) * p

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    keep = torch.rand(b, n, generator=g).argsort(dim=1)[:, :k].to(device)
    fused = ops.fused_ops()
    out = {}

    # masked_patch_embed: the student's patch embedding; weight and bias train, pos_embed is fixed (sin-cos)
    images, weight, bias, pos = rand(b, 3, side, side), rand(d, 3, p, p, scale=0.02), rand(d), rand(n, d)

    def patch_inputs():
        return [images, keep, leaf(weight, True), leaf(bias, True), pos]

    def conv_gather(a):
        tokens = F.conv2d(a[0], a[2], a[3], stride=p).flatten(2).transpose(1, 2) + a[4]
        return tokens.gather(1, a[1][..., None].expand(-1, -1, d))

    out["masked_patch_embed"] = {
        "fused": Case(patch_inputs, lambda a: fused.masked_patch_embed(*a)),
        "reference": Case(patch_inputs, lambda a: reference.masked_patch_embed(*a)),
        "conv_gather": Case(patch_inputs, conv_gather),
    }

    # align_loss: predictions at CLS + K kept tokens against the teacher's 1 + N rows, smooth-L1, layernorm
    pred, target = rand(l, b, 1 + k, d), rand(l, b, 1 + n, d)

    rows = ops.cls_and_kept_rows(keep)

    def loss_inputs():
        return [leaf(pred, True), target, rows]

    out["align_loss"] = {
        "fused": Case(loss_inputs, lambda a: fused.align_loss(*a)),
        "reference": Case(loss_inputs, lambda a: reference.align_loss(*a)),
    }

    # dynamic_align: S student levels mixed into L, then the L linear heads D → D
    hidden, mix, head_w, head_b = rand(s, b, 1 + k, d), rand(l, s, scale=0.1), rand(l, d, d, scale=0.03), rand(l, d)

    def align_inputs():
        return [leaf(hidden, True), leaf(mix, True), leaf(head_w, True), leaf(head_b, True)]

    out["dynamic_align"] = {
        "fused": Case(align_inputs, lambda a: fused.dynamic_align(*a)),
        "reference": Case(align_inputs, lambda a: reference.dynamic_align(*a)),
    }

    # masked_pixel_loss: MAE's decoder predictions at the N − K masked patches against the normalized pixels
    masked = torch.rand(b, n, generator=g).argsort(dim=1)[:, k:].to(device)
    pixels = rand(b, n - k, 3 * p * p)

    def pixel_inputs():
        return [leaf(pixels, True), images, masked, p]

    out["masked_pixel_loss"] = {
        "fused": Case(pixel_inputs, lambda a: fused.masked_pixel_loss(*a)),
        "reference": Case(pixel_inputs, lambda a: reference.masked_pixel_loss(*a)),
    }
    return {name: out[name] for name in args.ops}


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def time_split(case: Case, sync) -> tuple[float, float]:
    """Forward, then backward, timed separately; everything they made is freed on return."""
    inputs = case.make()
    holder = {}
    forward = timed(lambda: holder.setdefault("out", case.run(inputs)), sync)
    grad = torch.ones_like(holder["out"])
    backward = timed(lambda: holder["out"].backward(grad), sync)
    return forward, backward


def time_full(case: Case, sync) -> float:
    inputs = case.make()
    grad = torch.ones_like(case.run(case.make()).detach())
    return timed(lambda: case.run(inputs).backward(grad), sync)


def time_variants(variants: dict[str, Case], rounds: int, warmup: int, sync) -> dict:
    """Seconds per stage per variant; every round runs each variant's forward, backward and full once, each
    from the same state (nothing of the previous stage alive), in an order that rotates every round."""
    samples = {name: {stage: [] for stage in STAGES} for name in variants}
    names = list(variants)
    for round_index in range(warmup + rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            forward, backward = time_split(variants[name], sync)
            full = time_full(variants[name], sync)
            if round_index >= warmup:
                for stage, seconds in zip(STAGES, (forward, backward, full)):
                    samples[name][stage].append(seconds)
    return samples


def memory_stages(case: Case, device: torch.device, sync) -> dict:
    """MB: peak growth over forward, backward and full, and what the forward keeps alive for backward."""
    def measure(fn):
        if device.type == "cuda":
            sync()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            result = fn()
            sync()
            return (torch.cuda.max_memory_allocated(device) - before) / 2**20, result
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the high-water mark to the current resident set
        before = read_status_kb("VmRSS")
        result = fn()
        return (read_status_kb("VmHWM") - before) / 1024, result

    def resident():
        if device.type == "cuda":
            sync()
            return torch.cuda.memory_allocated(device) / 2**20
        return read_status_kb("VmRSS") / 1024

    result = {}
    for _ in range(2):  # the first round warms up allocator and thread pools
        inputs = case.make()
        start = resident()
        result["forward"], out = measure(lambda: case.run(inputs))
        result["kept"] = resident() - start
        grad = torch.ones_like(out)
        result["backward"], _ = measure(lambda: out.backward(grad))
        del out
        inputs = case.make()
        result["full"], _ = measure(lambda: case.run(inputs).backward(grad))
        del inputs
    return result


def probe(args) -> None:
    """Child process of the CPU memory measurement: print one variant's memory as JSON."""
    device, dtype = torch.device("cpu"), getattr(torch, args.dtype)
    op, variant = args.probe
    case = cases(args, device, dtype)[op][variant]
    print(json.dumps(memory_stages(case, device, lambda: None)))


def cpu_memory(args, op: str, variant: str) -> dict:
    argv = args.argv
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--ops", op, "--probe", op, variant]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def environment(device: torch.device) -> dict:
    import timm

    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda or "",
            "python": platform.python_version(), "timm": timm.__version__}


def run(args) -> list[dict]:
    device = chosen_device(args.device)
    dtype = getattr(torch, args.dtype)
    if ops.fused_ops() is None:
        raise UsageError("fastmim._C is not built: nothing to compare (pip install -e . --no-build-isolation)")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    env = environment(device)
    shapes = (f"B={args.batch} N={args.patches} K={args.kept} D={args.dim} L={args.levels} "
              f"S={args.student_levels} p={args.patch_size}")
    rows = []
    for op, variants in cases(args, device, dtype).items():
        samples = time_variants(variants, args.repeats, args.warmup, sync)
        memory = {}
        if not args.no_memory:
            memory = {name: (memory_stages(case, device, sync) if device.type == "cuda" else cpu_memory(args, op, name))
                      for name, case in variants.items()}
        medians = {name: {stage: statistics.median(v) for stage, v in s.items()} for name, s in samples.items()}
        for name in variants:
            for stage in STAGES:
                values = samples[name][stage]
                row = {"op": op, "variant": name, "stage": stage, "median_ms": 1e3 * medians[name][stage],
                       "min_ms": 1e3 * min(values), "max_ms": 1e3 * max(values),
                       "peak_mb": memory.get(name, {}).get(stage, float("nan")),
                       "kept_mb": memory.get(name, {}).get("kept", float("nan")) if stage == "forward"
                       else float("nan")}
                for base in BASELINES[op]:
                    row[f"speedup_vs_{base}"] = medians[base][stage] / medians[name][stage]
                rows.append({**row, "dtype": args.dtype, "shapes": shapes, "repeats": args.repeats, **env})
    return rows


COLUMNS = ["op", "variant", "stage", "median_ms", "min_ms", "max_ms", "speedup_vs_reference",
           "speedup_vs_conv_gather", "peak_mb", "kept_mb", "dtype", "shapes", "repeats", "device", "torch", "cuda",
           "python", "timm"]


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})


def print_table(rows: list[dict]) -> None:
    print(f"{rows[0]['device']} · {rows[0]['dtype']} · {rows[0]['shapes']} · torch {rows[0]['torch']}")
    header = (f"{'op':<19}{'variant':<12}{'stage':<9}{'median ms':>10}{'vs ref':>8}{'vs conv':>8}"
              f"{'peak MB':>9}{'kept MB':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        conv = r.get("speedup_vs_conv_gather")
        print(f"{r['op']:<19}{r['variant']:<12}{r['stage']:<9}{r['median_ms']:>10.2f}{r['speedup_vs_reference']:>7.2f}x"
              f"{(f'{conv:.2f}x' if conv else ''):>8}{r['peak_mb']:>9.1f}{r['kept_mb']:>9.1f}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv  # the CPU memory probes rerun this script with the same shapes
    if args.probe:
        probe(args)
        return 0
    rows = run(args)
    device_kind = "cuda" if "CPU:" not in rows[0]["device"] else "cpu"
    print_table(rows)
    if args.out is None:  # the committed results are only replaced when asked to
        print(f"no file written (--out benchmarks/{RESULTS.name}/kernels_{device_kind}_{args.dtype}.csv keeps the result)")
        return 0
    write_csv(rows, args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    entry_point(main)
