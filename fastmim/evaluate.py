"""`python -m fastmim.evaluate knn|linear MODEL --train DIR --val DIR`: what a student's features are worth.

MODEL is a fastmim checkpoint (`runs/x/checkpoints/last.pt`), an exported `.safetensors`, or a timm model name
with `--weights FILE` (or `--weights hub`), so that a teacher or a baseline is measured the same way. DIR are
ImageFolder trees (one subfolder per class; the classes of --train name the labels). Both sets go through the
evaluation transform (resize to size / 0.875, centre crop) once; features are the CLS token after the final
norm (`--pooling cls`) or the mean of the patch tokens (`--pooling mean`).

- knn: DINO's weighted k-NN (cosine similarity, k = 20, votes weighted exp(similarity / 0.07)), top-1 and top-5.
- linear: MAE's linear probe on the cached features (BatchNorm without affine + Linear, LARS, lr = base_lr ×
  batch / 256, warmup then cosine).

Under torchrun each process extracts its share and the features are gathered on rank 0, which trains and
scores. Prints a table and, with --out, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fastmim.console import one_line_warnings

EXAMPLES = """examples:
  python -m fastmim.evaluate knn runs/demo/checkpoints/last.pt --train data/train --val data/val
  python -m fastmim.evaluate linear student.safetensors --train data/train --val data/val --out probe.json
  python -m fastmim.evaluate knn vit_base_patch16_clip_224.openai --weights clip.safetensors --train ... --val ...
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmim.evaluate", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("protocol", choices=["knn", "linear"], help="k-NN (DINO) or linear probe (MAE)")
    p.add_argument("model", metavar="MODEL", help="a fastmim checkpoint (.pt), an exported .safetensors, or a timm "
                   "model name (with --weights)")
    p.add_argument("--train", required=True, metavar="DIR", help="ImageFolder of the labelled training images")
    p.add_argument("--val", required=True, metavar="DIR", help="ImageFolder of the images scored")
    p.add_argument("--weights", metavar="FILE|hub", help="weights of a timm-name MODEL: a local file or hub")
    p.add_argument("--arch", metavar="NAME", help="timm model of a .safetensors that does not record it")
    p.add_argument("--img-size", type=int, metavar="N", help="image size of a timm-name MODEL (default: timm's)")
    p.add_argument("--pooling", choices=["auto", "cls", "mean"], default="auto",
                   help="the CLS token after the final norm, or the mean of the patch tokens; auto (default): the "
                   "feature the method trained (mean for MaskDistill, CLS otherwise; CLS for a timm name)")
    p.add_argument("--k", type=int, default=20, help="k-NN neighbours (default 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature (default 0.07)")
    p.add_argument("--epochs", type=int, default=90, help="linear probe epochs (default 90)")
    p.add_argument("--probe-batch", type=int, default=16384, help="linear probe batch (default 16384)")
    p.add_argument("--base-lr", type=float, default=0.1, help="linear probe base lr, × batch / 256 (default 0.1)")
    p.add_argument("--optimizer", choices=["lars", "sgd"], default="lars", help="linear probe optimizer")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--workers", type=int, default=4, help="data loader workers (default 4)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the model runs")
    p.add_argument("--out", metavar="FILE.json", help="also write the result as JSON")
    return p


def check_args(args) -> None:
    """Everything that can be checked without reading a file: MODEL's kind, the folders, the numbers."""
    from fastmim.eval.models import check_model_spec

    check_model_spec(args.model, args.weights)
    for name in ("train", "val"):
        if not Path(getattr(args, name)).is_dir():
            raise ValueError(f"--{name} {getattr(args, name)!r}: not a folder (an ImageFolder tree is needed)")
    for name in ("k", "epochs", "probe_batch", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.temperature <= 0 or args.base_lr <= 0:
        raise ValueError("--temperature and --base-lr must be positive")
    if args.workers < 0:
        raise ValueError(f"--workers must be non-negative, got {args.workers}")


def labelled_sets(args):
    """The two ImageFolders, found and their classes checked (the validation classes among the training ones)
    before the model is loaded or any feature extracted; the transform is set once the model is known."""
    from fastmim.eval.data import image_folder

    train = image_folder(args.train, None)
    return train, image_folder(args.val, None, train.classes)


def features_of(evaluated, data, pooling, args, device, dist):
    """(features, labels) of the ImageFolder `data` in its order; under torchrun process r extracts images
    r, r + world, … (no padding, so no image counts twice) and every process gets all of them back."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from fastmim.data import usable_workers
    from fastmim.eval import extract

    path = data.root
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    share = Subset(data, range(rank, len(data), world))
    loader = DataLoader(share, batch_size=args.batch_size, shuffle=False, num_workers=usable_workers(args.workers))
    seen = [0]

    def progress(n):
        seen[0] += n
        if rank == 0:
            print(f"\r  {path}: {seen[0]}/{len(share)} images" + (f" (rank 0's share of {len(data)})" if dist else ""),
                  end="", flush=True)

    feats, labels = extract(evaluated.model, loader, pooling, device, progress)
    if rank == 0:
        print()
    if dist:  # every rank's share on every rank, back in the folder's order
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, (feats, labels))
        order = torch.cat([torch.arange(r, len(data), world) for r in range(world)])
        feats = torch.empty(len(data), feats.shape[1]).index_copy_(0, order, torch.cat([f for f, _ in gathered]))
        labels = torch.empty(len(data), dtype=torch.long).index_copy_(0, order, torch.cat([y for _, y in gathered]))
    return feats, labels


def say(line: str) -> None:
    """A line from rank 0 (every process runs the same command under torchrun)."""
    import os

    if int(os.environ.get("RANK", 0)) == 0:
        print(line, flush=True)


def evaluate(args) -> dict:
    import os

    import torch

    from fastmim.eval import LinearProbeConfig, eval_transform, knn_accuracy, linear_probe
    from fastmim.eval.features import POOLING_WORDS
    from fastmim.eval.models import load_eval_model, to_device

    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    train_data, val_data = labelled_sets(args)
    evaluated = to_device(load_eval_model(args.model, args.weights, args.arch, args.img_size), device)
    train_data.transform = val_data.transform = eval_transform(evaluated.img_size, evaluated.mean, evaluated.std)
    pooling = evaluated.pooling if args.pooling == "auto" else args.pooling
    say(f"features: {POOLING_WORDS[pooling]}" + (f" ({evaluated.pooling_reason}; --pooling to choose)"
                                                  if args.pooling == "auto" else ""))
    if args.protocol == "linear" and args.probe_batch > len(train_data):
        say(f"warning: --probe-batch {args.probe_batch} is more than the {len(train_data)} training images: each "
            f"step sees them all while lr = --base-lr × {args.probe_batch}/256 assumes a larger batch; use "
            f"--probe-batch {min(len(train_data), 256)} or so on a set this small")
    start = time.perf_counter()
    train_f, train_y = features_of(evaluated, train_data, pooling, args, device, distributed)
    val_f, val_y = features_of(evaluated, val_data, pooling, args, device, distributed)
    result = {"protocol": args.protocol, "model": args.model, "description": evaluated.description,
              "pooling": pooling, "train_images": len(train_y), "val_images": len(val_y),
              "classes": len(train_data.classes)}
    if distributed and torch.distributed.get_rank() != 0:
        return result  # rank 0 scores the gathered features: the probe on cached features is seconds of work
    if args.protocol == "knn":
        top1, top5 = knn_accuracy(train_f, train_y, val_f, val_y, args.k, args.temperature)
        result.update(k=args.k, temperature=args.temperature)
    else:
        cfg = LinearProbeConfig(epochs=args.epochs, batch_size=args.probe_batch, base_lr=args.base_lr,
                                optimizer=args.optimizer)
        scores = linear_probe(train_f, train_y, val_f, val_y, cfg)
        top1, top5 = scores["top1"], scores["top5"]
        result.update(epochs=args.epochs, probe_batch=args.probe_batch, base_lr=args.base_lr,
                      optimizer=args.optimizer)
    result.update(top1=top1, top5=top5, seconds=round(time.perf_counter() - start, 3))
    return result


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['protocol']} of {result['description']}")
    for column in ("top-1 %", "top-5 %", "train images", "val images", "classes", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['top1']:.2f}", f"{result['top5']:.2f}", str(result["train_images"]),
                  str(result["val_images"]), str(result["classes"]), f"{result['seconds']:.1f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    one_line_warnings()
    try:
        check_args(args)
        result = evaluate(args)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: error: interrupted; nothing was written\n")
    import torch.distributed as dist

    from fastmim.train import distributed as dist_utils

    if not dist.is_initialized() or dist.get_rank() == 0:
        print_result(result)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.out}")
    # All leave together, as the trainer does: a process tearing down its gloo group while rank 0 still
    # scores aborts (SIGABRT).
    dist_utils.barrier()
    dist_utils.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
