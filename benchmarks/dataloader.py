"""Input pipeline throughput: images/s of each data backend on the same JPEG folder.

    python benchmarks/dataloader.py --workers 2 --threads 2 --out-dir benchmarks/results   # writes dataloader_<device>.*

Rows: DALI on the CPU (CPU decoder, `--threads` threads), DALI on the GPU (`mixed` decoder; only when a GPU is
present), the torchvision DataLoader (`--workers` worker processes, PIL decode) and the built-in synthetic set
(rendered on the fly, same DataLoader and augmentation). All run the official augmentation at --img-size.
Without --data, a temporary folder of --images structured JPEGs of --width×--height is generated first.

Each round times one full epoch of every backend, interleaved (backend order rotates per round) after one
untimed warm-up epoch each; the medians over the rounds are reported. `images_per_sec` counts the whole epoch
including its start (DALI builds a pipeline per epoch, DataLoader workers restart their prefetch); `steady`
leaves out the first batch. On a GPU the batches are moved to it, as the trainer does, and synchronized.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_utils import UsageError, argument_parser, entry_point, environment, non_negative, positive  # noqa: E402

from fastmim.data import dali_available  # noqa: E402
from fastmim.data.base import DataConfig  # noqa: E402
from fastmim.data.folder import ImageFiles, find_images  # noqa: E402
from fastmim.data.synthetic import SyntheticImages  # noqa: E402
from fastmim.data.torchvision import TorchvisionLoader  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    p = argument_parser(__doc__)
    p.add_argument("--data", type=Path, help="an existing image folder or list file (default: generate one)")
    p.add_argument("--images", type=positive, default=512, help="JPEGs to generate (default 512)")
    p.add_argument("--width", type=positive, default=500)
    p.add_argument("--height", type=positive, default=375)
    p.add_argument("--img-size", type=positive, default=224)
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--workers", type=non_negative, default=2, help="torchvision DataLoader worker processes")
    p.add_argument("--threads", type=positive, default=2, help="DALI CPU threads")
    p.add_argument("--hw-decoder-load", type=float, default=DataConfig.dali_hw_decoder_load,
                   help="share of the JPEGs DALI's `mixed` decoder sends to the GPU's hardware JPEG decoder (A100, "
                   f"H100), 0 for none (default {DataConfig.dali_hw_decoder_load}, the trainer's)")
    p.add_argument("--rounds", type=positive, default=5, help="timed epochs per backend (medians reported)")
    p.add_argument("--backends", default="dali-cpu,dali-gpu,torchvision,synthetic",
                   help="comma-separated subset of dali-cpu, dali-gpu, torchvision, synthetic")
    p.add_argument("--out-dir", type=Path, help="write dataloader_<device>.csv/.json into this folder (default: "
                   f"print only; {RESULTS.parent.name}/{RESULTS.name} holds the committed results)")
    return p.parse_args(argv)


def generate_jpegs(folder: Path, count: int, width: int, height: int) -> None:
    from PIL import Image

    from fastmim.data.synthetic import render

    for i in range(count):
        sub = folder / f"class_{i % 8}"
        sub.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(render(1, i, max(width, height) // 2)).resize((width, height), Image.BILINEAR)
        picture.save(sub / f"img_{i:05d}.jpg", quality=90)


def build_loaders(args, data: Path, device: torch.device) -> dict:
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    cfg = DataConfig(path=str(data), img_size=args.img_size, batch_size=args.batch_size, workers=args.workers,
                     seed=0, pin_memory=device.type == "cuda")
    loaders = {}
    if "torchvision" in names:
        loaders["torchvision"] = TorchvisionLoader(ImageFiles(find_images(data)), cfg, device=device)
    if "synthetic" in names:
        count = len(find_images(data))
        loaders["synthetic"] = TorchvisionLoader(SyntheticImages(count), cfg, device=device)
    if dali_available() and ({"dali-cpu", "dali-gpu"} & set(names)):
        from fastmim.data.dali import DaliLoader

        dali_cfg = DataConfig(**{**cfg.__dict__, "workers": args.threads, "dali_hw_decoder_load": args.hw_decoder_load})
        if "dali-cpu" in names:
            loaders["dali-cpu"] = DaliLoader(dali_cfg, device=torch.device("cpu"))
        if "dali-gpu" in names and device.type == "cuda":
            loaders["dali-gpu"] = DaliLoader(dali_cfg, device=device)
    return loaders


def time_epoch(loader, epoch: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loader.set_epoch(epoch)
    sync()
    start = time.perf_counter()
    first, images = None, 0
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        images += batch.shape[0]
        if first is None:
            sync()
            first = (time.perf_counter(), batch.shape[0])
    sync()
    end = time.perf_counter()
    steady = (images - first[1]) / (end - first[0]) if end > first[0] else float("nan")
    return {"images_per_sec": images / (end - start), "steady_images_per_sec": steady,
            "first_batch_s": first[0] - start, "images": images}


def run(args, data: Path, device: torch.device) -> list[dict]:
    loaders = build_loaders(args, data, device)
    for loader in loaders.values():  # warm-up: imports, worker start, first pipeline
        time_epoch(loader, 0, device)
    samples = {name: [] for name in loaders}
    names = list(loaders)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(time_epoch(loaders[name], r + 1, device))
    rows = []
    for name, runs in samples.items():
        rates = [s["images_per_sec"] for s in runs]
        rows.append({
            "backend": name,
            "images_per_sec": statistics.median(rates),
            "images_per_sec_min": min(rates), "images_per_sec_max": max(rates),
            "steady_images_per_sec": statistics.median(s["steady_images_per_sec"] for s in runs),
            "first_batch_s": statistics.median(s["first_batch_s"] for s in runs),
            "images_per_epoch": runs[0]["images"], "rounds": len(runs),
            "parallelism": f"{args.threads} threads" if name.startswith("dali") else f"{args.workers} workers",
        })
    return rows


def versions() -> dict:
    import PIL
    import torchvision

    out = {"torchvision": torchvision.__version__, "pillow": PIL.__version__}
    if dali_available():
        import nvidia.dali

        out["dali"] = nvidia.dali.__version__
    return out


BACKENDS = ("dali-cpu", "dali-gpu", "torchvision", "synthetic")


def check_args(args) -> None:
    unknown = [n.strip() for n in args.backends.split(",") if n.strip() and n.strip() not in BACKENDS]
    if unknown:
        raise UsageError(f"--backends: unknown {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"--data {str(args.data)!r}: no such folder")


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="fastmim_bench_") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "jpegs"
            generate_jpegs(data, args.images, args.width, args.height)
        rows = run(args, data, device)
    env = environment(device)
    env["versions"].update(versions())
    by_name = {row["backend"]: row for row in rows}
    ratios = {}
    if "dali-cpu" in by_name and "torchvision" in by_name:
        ratios["dali_cpu_over_torchvision"] = by_name["dali-cpu"]["images_per_sec"] / by_name["torchvision"]["images_per_sec"]
    if "dali-gpu" in by_name and "torchvision" in by_name:
        ratios["dali_gpu_over_torchvision"] = by_name["dali-gpu"]["images_per_sec"] / by_name["torchvision"]["images_per_sec"]
    result = {**env, "cpu_cores": len(__import__("os").sched_getaffinity(0)), "command": " ".join(sys.argv),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "source_images": "generated" if args.data is None else str(args.data),
              "results": rows, "ratios": ratios}
    if args.out_dir is not None:
        write(result, args.out_dir, device)
    print_rows(result)
    return result


def write(result: dict, out_dir: Path, device: torch.device) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"dataloader_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        fields = ["device", "backend", "images_per_sec", "images_per_sec_min", "images_per_sec_max",
                  "steady_images_per_sec", "first_batch_s", "images_per_epoch", "rounds", "parallelism"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in result["results"]:
            writer.writerow({"device": result["device"], **row})


def print_rows(result: dict) -> None:
    print(f"device: {result['device']}; versions: {result['versions']}")
    print(f"{'backend':<12} {'images/s':>10} {'steady':>10} {'first batch s':>14}  parallelism")
    for row in result["results"]:
        print(f"{row['backend']:<12} {row['images_per_sec']:>10.1f} {row['steady_images_per_sec']:>10.1f} "
              f"{row['first_batch_s']:>14.3f}  {row['parallelism']}")
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    entry_point(main)
