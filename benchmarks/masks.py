"""Time to draw one batch of masks: fastmim's `block` masks (the fastmim.ops.block_mask kernel; and
`block_reference`, its plain-PyTorch reference vectorized over the batch), `random` and `attention` masks
(fastmim.methods.masks) against a transcription of BEiT v2's `MaskingGenerator`, its per-sample Python loop
(what BEiT v2 and the MaskDistill ports run in their data loaders). Variants run interleaved in one process (the
order rotates every round); medians are reported. Writes JSON with the device and versions.

    python benchmarks/masks.py                       # 1,024 masks of 14 × 14 patches on the CPU
    python benchmarks/masks.py --device cuda --batch 4096

Ratios are the BEiT loop's time / the variant's time (> 1: the variant is faster).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from bench_utils import argument_parser, chosen_device, entry_point, environment, non_negative, positive  # noqa: E402

from fastmim.methods.masks import attention_mask, block_mask, num_masked, random_mask  # noqa: E402
from fastmim.ops import reference  # noqa: E402
from tests.methods.beit_masking import beit_block_mask  # noqa: E402

RESULTS = ROOT / "results"


def parse_args(argv=None):
    p = argument_parser(__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=positive, default=1024, help="masks per batch")
    p.add_argument("--grid", type=positive, default=14, help="patches per side (14: 224 px at patch 16)")
    p.add_argument("--block-ratio", type=float, default=0.4, help="block masks' ratio (MaskDistill: 0.4)")
    p.add_argument("--ratio", type=float, default=0.75, help="random and attention masks' ratio")
    p.add_argument("--repeats", type=positive, default=7, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=non_negative, default=1)
    p.add_argument("--out", type=Path, help="JSON path (default: print only)")
    return p.parse_args(argv)


def variants(args, device: torch.device) -> dict:
    """name → a function drawing one batch of masks."""
    b, g, n = args.batch, args.grid, args.grid * args.grid
    masked = num_masked(n, args.block_ratio)
    importance = torch.rand(b, n, device=device).softmax(dim=1)
    rng = random.Random(0)
    return {
        "beit_loop": lambda: [beit_block_mask(rng, g, g, masked) for _ in range(b)],
        "block": lambda: block_mask(b, g, g, args.block_ratio, device),
        "block_reference": lambda: reference.block_mask(b, g, g, masked, device),
        "random": lambda: random_mask(b, n, args.ratio, device),
        "attention": lambda: attention_mask(importance, args.ratio),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, device: torch.device) -> dict:
    fns = variants(args, device)
    names = list(fns)
    samples = {name: [] for name in names}
    for round_ in range(args.warmup + args.repeats):
        rotation = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in rotation:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            if round_ >= args.warmup:
                samples[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians["beit_loop"]
    return {name: {"ms": 1000 * t, "ms_min": 1000 * min(samples[name]), "ms_max": 1000 * max(samples[name]),
                   "vs_beit_loop": base / t} for name, t in medians.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = chosen_device(args.device)
    timings = measure(args, device)
    result = {**environment(device), "config": {k: (str(v) if isinstance(v, Path) else v)
                                                for k, v in vars(args).items()}, "timings": timings}
    for name, t in timings.items():
        print(f"{name:>15}: {t['ms']:9.2f} ms per {args.batch} masks ({t['ms_min']:.2f}–{t['ms_max']:.2f}), "
              f"{t['vs_beit_loop']:7.1f}× the BEiT loop")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    entry_point(main)
