"""Training images/s of one method's step (--method maskalign|mae|mrmae|maskdistill): fastmim's path against the
straightforward computation, interleaved in one process, with a stage breakdown, MFU against a matmul peak
measured in the same run, and peak memory.

    python benchmarks/throughput.py --model small --device cpu --out benchmarks/results/x.json
    python benchmarks/throughput.py --method mae --model base --device cpu
    python benchmarks/throughput.py --model base --device cuda --batch-size 128   # on a GPU

--dtype auto (the default) is bf16 on a GPU and on CPUs with native bf16 matrix products (AVX-512 BF16, AMX)
and fp32 on other CPUs, which only emulate bf16 (asking for bf16 there warns).

Paths (same weights and batch; both train with AdamW):
- fastmim: the trainer's own step (fastmim.train.step.train_step): fused kernels, the teachers' last block at
  the rows the method reads only, folded re-normalization, fused AdamW, no host synchronization; for
  MaskAlign also the CLS-row importance and the supervised levels only, for MAE the decoder's projection at
  the masked patches only and the pixel loss read straight from the image.
- reference, MaskAlign: fastmim.methods.maskalign_reference — eager teacher attention returning every map, every
  level through every head, conv over all patches then gather, all levels normalized then gathered, einsum DA,
  separate loss ops; MAE and MR-MAE: fastmim.methods.mae_reference — models_mae.py's computation (conv then
  gather, the decoder's projection at every token, the loss over a patchified batch then the masked mean) and
  each teacher's full forward, normalized at every row then gathered; MaskDistill:
  fastmim.methods.maskdistill_reference — BEiT v2's structure (conv over every patch, mask-token blend, the head
  on every token then the masked ones selected, the teacher's full forward normalized at every row then
  gathered, the plain-PyTorch block mask). Foreach AdamW and a `.item()` each step.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import (  # noqa: E402
    chosen_device, Timer, argument_parser, entry_point, environment, measure_peak_flops, memory_meter, non_negative, positive, print_table,
)

from fastmim import ops  # noqa: E402
from fastmim.data import build_loader  # noqa: E402
from fastmim.data.base import DataConfig  # noqa: E402
from fastmim.data_config import ImageSpec  # noqa: E402
from fastmim.methods.configs import MAEConfig, MaskAlignConfig, MaskDistillConfig, MRMAEConfig  # noqa: E402
from fastmim.methods.mae_reference import MAEReference  # noqa: E402
from fastmim.methods.maskalign_reference import MaskAlignReference  # noqa: E402
from fastmim.methods.maskdistill_reference import MaskDistillReference  # noqa: E402
from fastmim.methods.registry import build_method  # noqa: E402
from fastmim.train.optim import build_optimizer  # noqa: E402
from fastmim.train.step import train_step  # noqa: E402
from fastmim.train.precision import autocast_for, cpu_has_fast_bf16, warn_if_slow_bf16  # noqa: E402

TEACHERS = {"tiny": "vit_tiny_patch16_224", "small": "vit_small_patch16_224", "base": "clip_b16", "large": "clip_l14"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
REFERENCES = {"maskalign": MaskAlignReference, "mae": MAEReference, "mrmae": MAEReference,
              "maskdistill": MaskDistillReference}


def parse_args(argv=None):
    p = argument_parser(__doc__)
    p.add_argument("--method", default="maskalign", choices=list(REFERENCES),
                   help="the objective (default maskalign); MAE has no teacher")
    p.add_argument("--model", default="base", choices=["tiny", "small", "base", "large"], help="student size")
    p.add_argument("--teacher-size", default="base", choices=list(TEACHERS),
                   help="teacher with random weights: base = CLIP ViT-B/16 (default), large = CLIP ViT-L/14 at 196 px")
    p.add_argument("--batch-size", type=positive, help="images per step (default 128 on CUDA, 16 on the CPU)")
    p.add_argument("--img-size", type=positive, default=224)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="bf16 autocast or fp32; auto (default): bf16 on CUDA and on CPUs with native bf16 matrix "
                   "products (AVX-512 BF16 / AMX), fp32 on other CPUs, where bf16 is emulated")
    p.add_argument("--steps", type=positive, default=8, help="timed steps per path (the median is reported)")
    p.add_argument("--warmup", type=non_negative, default=2, help="untimed steps per path first")
    p.add_argument("--kernels", default="auto", choices=["auto", "fused", "reference"],
                   help="fastmim.ops implementation used by the fastmim path")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the fastmim path's student and teacher blocks")
    p.add_argument("--workers", type=non_negative, default=2,
                   help="worker processes rendering the synthetic images (default 2; more where a big batch waits)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    p.add_argument("--probe-memory", choices=["fastmim", "reference"], help=argparse.SUPPRESS)  # internal
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv  # the memory probe re-runs this script with the same arguments
    return args


def method_config(args):
    teacher = TEACHERS[args.teacher_size]
    if args.method == "mae":
        return MAEConfig(student=args.model)
    if args.method == "mrmae":
        return MRMAEConfig(student=args.model, teachers=(teacher,), teacher_weights=("random",))
    if args.method == "maskdistill":
        return MaskDistillConfig(student=args.model, teacher=teacher, teacher_weights="random", drop_path=0.0)
    return MaskAlignConfig(student=args.model, teacher=teacher, teacher_weights="random", drop_path=0.0)


def build_paths(args, device):
    torch.manual_seed(0)
    cfg, image = method_config(args), ImageSpec(args.img_size)
    probe = build_method(cfg, image)
    if args.method == "maskalign" and probe.teacher.depth != probe.student.depth:
        cfg.fusion = "sum"  # e.g. ViT-L student on a 12-level teacher
        probe = build_method(cfg, image)
    reference_method = copy.deepcopy(probe).to(device)
    fastmim_method = probe.prepare(device, args.dtype, args.compile)
    return fastmim_method, REFERENCES[args.method](reference_method).to(device)


class FastmimPath:
    name = "fastmim"

    def __init__(self, method, autocast):
        self.method, self.autocast = method, autocast
        self.optimizer = build_optimizer("adamw", method.param_groups(0.05), 1e-4, (0.9, 0.95))

    def step(self, images):
        train_step(self.method, self.optimizer, [images], self.autocast, None)

    def staged_step(self, images, timer):
        """The same step cut at stage boundaries, for the breakdown (synchronized between stages)."""
        with self.autocast:
            frozen = timer.stage("teacher_forward", lambda: self.method.frozen_pass(images))
            out = timer.stage("student_forward", lambda: self.method.trained_pass(images, frozen))
        timer.stage("backward", lambda: out.loss.backward())
        timer.stage("optimizer", self._update)

    def _update(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class ReferencePath(FastmimPath):
    name = "reference"

    def __init__(self, reference, autocast):
        self.method, self.autocast = reference, autocast
        params = [p for p in reference.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step(self, images):
        with self.autocast:
            out = self.method(images)
        out.loss.backward()
        self._update()
        out.loss.item()  # the original code logs every step


def timed(path, images, sync) -> float:
    sync()
    start = time.perf_counter()
    path.step(images)
    sync()
    return time.perf_counter() - start


def run(args) -> dict:
    device = chosen_device(args.device)
    args.dtype = resolve_dtype(args, device)
    batch = args.batch_size or (128 if device.type == "cuda" else 16)
    ops.set_kernels(args.kernels)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fastmim_method, reference = build_paths(args, device)
    autocast = autocast_for(device, args.dtype)
    paths = [FastmimPath(fastmim_method, autocast), ReferencePath(reference, autocast)]

    breakdown_rounds = max(3, args.steps // 2)
    # one epoch covers every breakdown round: no path's data stage pays an epoch start (worker restart)
    data_cfg = DataConfig(backend="synthetic", img_size=args.img_size, batch_size=batch, workers=args.workers,
                          synthetic_images=batch * max(4, 2 * breakdown_rounds), pin_memory=device.type == "cuda")
    loader = build_loader(data_cfg, 0, 1, device)
    batches = [b.to(device) for b, _ in zip(loader, range(2))]

    times = {p.name: [] for p in paths}
    for round_index in range(args.warmup + args.steps):  # interleaved; the order alternates every round
        for path in (paths if round_index % 2 == 0 else paths[::-1]):
            seconds = timed(path, batches[round_index % len(batches)], sync)
            if round_index >= args.warmup:
                times[path.name].append(seconds)

    breakdown = stage_breakdown(paths, loader, device, sync, breakdown_rounds)
    memory = {p.name: peak_memory(p, batches[0], device, sync, args.argv) for p in paths}
    peak = measure_peak_flops(device, DTYPES[args.dtype])
    flops = fastmim_method.flops_per_image()
    result = {
        "device": environment(device)["device"], "versions": environment(device)["versions"],
        "config": {**{k: v for k, v in vars(args).items() if k not in ("out", "argv", "probe_memory")},
                   "batch_size": batch,
                   "device": str(device), "flops_per_image": flops, "peak_flops": peak,
                   "kernels_in_use": ops.kernels_mode()},
    }
    for name, seconds in times.items():
        per_sec = [batch / s for s in seconds]
        median = statistics.median(per_sec)
        result[name] = {"images_per_sec": median, "images_per_sec_min": min(per_sec),
                        "images_per_sec_max": max(per_sec), "breakdown": breakdown[name],
                        "mfu": median * flops / peak, "peak_memory_mb": memory[name]}
    result["speedup"] = result["fastmim"]["images_per_sec"] / result["reference"]["images_per_sec"]
    return result


def peak_memory(path, images, device, sync, argv: list[str]) -> float:
    """MB. On a GPU: max allocated over one step, in this process. On the CPU the allocator keeps freed memory,
    so the step runs in a fresh process of this script whose peak resident-set growth over its steps is read."""
    if device.type == "cuda":
        return memory_meter(device, lambda: path.step(images), sync)
    command = [sys.executable, __file__, *argv, "--probe-memory", path.name]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def probe_memory(args) -> None:
    """Child side of peak_memory: build everything, then measure the peak RSS growth of two steps."""
    device = torch.device("cpu")
    batch = args.batch_size or 16
    args.dtype = resolve_dtype(args, device)
    fastmim_method, reference = build_paths(args, device)
    autocast = autocast_for(device, args.dtype)
    path = FastmimPath(fastmim_method, autocast) if args.probe_memory == "fastmim" else ReferencePath(reference, autocast)
    images = torch.randn(batch, 3, args.img_size, args.img_size)
    print(memory_meter(device, lambda: [path.step(images) for _ in range(2)], lambda: None))


def stage_breakdown(paths, loader, device, sync, rounds: int) -> dict:
    """Per path, median seconds per stage over `rounds` synchronized steps (CUDA events on a GPU), the paths
    interleaved as in the timed rounds (the order alternates every round)."""
    timers = {path.name: Timer(device, sync) for path in paths}
    batches = endless(loader)
    for round_index in range(rounds):
        for path in (paths if round_index % 2 == 0 else paths[::-1]):
            timer = timers[path.name]
            images = timer.stage("data", lambda: next(batches).to(device, non_blocking=True))
            path.staged_step(images, timer)
    return {name: timer.medians() for name, timer in timers.items()}


def endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def resolve_dtype(args, device: torch.device) -> str:
    if args.dtype == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_fast_bf16() else "fp32"
    warn_if_slow_bf16(args.dtype, device, "--dtype")
    return args.dtype


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe_memory:
        ops.set_kernels(args.kernels)
        probe_memory(args)
        return 0
    result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    entry_point(main)
