"""The teacher forward with its last block on the CLS + kept rows only (fastmim's step) against the same teacher
computing every row of its last block and drawing the mask afterwards, interleaved in one process, medians.

    python benchmarks/teacher_last_block.py --out benchmarks/results/teacher_last_block_cpu.json
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import argument_parser, chosen_device, entry_point, environment, positive  # noqa: E402

from fastmim import ops  # noqa: E402
from fastmim.methods.masks import draw_mask  # noqa: E402
from fastmim.models.teacher import Teacher  # noqa: E402


def parse_args(argv=None):
    p = argument_parser(__doc__)
    p.add_argument("--teacher", default="clip_b16", help="teacher (random weights)")
    p.add_argument("--levels", default="8,9,10,11,12", help="supervised levels (default: top5 of 12)")
    p.add_argument("--batch-size", type=positive, default=16)
    p.add_argument("--mask-ratio", type=float, default=0.7)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the teacher's weights and input")
    p.add_argument("--rounds", type=positive, default=7, help="timed rounds per variant (medians reported)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = chosen_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    teacher = Teacher(args.teacher, student_grid=14, weights="random").to(device)
    teacher.to(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    levels = [int(level) for level in args.levels.split(",")]
    images = torch.randn(args.batch_size, 3, 224, 224, device=device)
    draw = functools.partial(draw_mask, "attention", args.mask_ratio, args.batch_size, 196, device)

    def every_row():
        draw(teacher(images, levels).importance)

    def kept_rows():
        part = teacher.begin(images, levels)
        teacher.finish(part, ops.cls_and_kept_rows(draw(part.importance).ids_keep))

    variants = {"every_row": every_row, "kept_rows": kept_rows}
    seconds = {name: [] for name in variants}
    for round_index in range(args.rounds + 1):  # the first round warms up; the order alternates
        for name, fn in (list(variants.items()) if round_index % 2 == 0 else list(variants.items())[::-1]):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_index:
                seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {**environment(device), "config": vars(args) | {"out": None},
              "median_s": medians, "min_s": {k: min(v) for k, v in seconds.items()},
              "max_s": {k: max(v) for k, v in seconds.items()},
              "speedup": medians["every_row"] / medians["kept_rows"]}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['device']}: every row {medians['every_row']:.3f} s, kept rows {medians['kept_rows']:.3f} s, "
          f"speedup {result['speedup']:.3f}x")
    return result


if __name__ == "__main__":
    entry_point(main)
