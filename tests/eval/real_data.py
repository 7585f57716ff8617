"""Learning shown on real images: scikit-learn's digits (1,797 real handwritten 8 × 8 images, shipped with the
package, no download), upscaled to 32 px and measured with fastmim's own k-NN monitor.

The protocol (chosen so that features must be robust to what raw pixels are not):
- 600 digits are held out as queries, each shifted by up to ±3 px and rotated by up to ±15° (a fixed draw);
  the k-NN bank is 10 unaugmented digits per class from the other 1,197 (the pool);
- the teacher is a 4-block, 64-wide ViT on 8-px patches that this protocol trains itself, supervised on the
  pool's labels with the same kind of augmentation (seconds to a minute on a CPU);
- each method pretrains a student of the same size on the pool's images (labels unused) with
  `python -m fastmim.pretrain`, the teacher's weights from a file, and the k-NN monitor on the bank and queries;
- a randomly initialized student of the same architecture is the floor;
- fine-tuning (`python -m fastmim.finetune`, MAE's protocol) on the bank's 10 labelled digits per class, scored
  on the 600 queries at the end: from each method's pretrained student, and from random weights.

    python -m tests.eval.real_data [--methods maskalign,mrmae,maskdistill,mae] [--out FILE.json]

prints the tables of k-NN and fine-tuning top-1 figures the README gives.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .digits import digits

IMG_SIZE, PATCH = 32, 8
VIT = dict(embed_dim=64, depth=4, num_heads=2)  # the student's and the teacher's size
QUERIES, BANK_PER_CLASS = 600, 10
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
TEACHER_STEPS = 400
KNN = dict(k=20, temperature=0.07)

# Per method: the demo recipe it starts from, epochs, the feature the k-NN reads (the one the method trains:
# MaskDistill supervises only patch tokens, so its CLS token is untrained; the others train the CLS token) and
# what this protocol changes besides the model and the data.
PRETRAIN = {
    "maskalign": ("demo", 40, "cls", ["method.mask_ratio=0.5", "optim.base_lr=6e-3"]),
    "mrmae": ("demo_mrmae", 40, "cls", ["method.mask_ratio=0.5", "optim.base_lr=6e-3"]),
    "maskdistill": ("demo_maskdistill", 40, "mean", ["optim.base_lr=6e-3"]),
    "mae": ("demo_mae", 40, "cls", ["optim.base_lr=6e-3"]),
}


# --- the images ------------------------------------------------------------------------------------------
def upscaled() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as [N, 3, 32, 32] in [0, 1] (bicubic, clamped) and their labels."""
    images, labels = digits()
    x = torch.from_numpy(images / 16.0).float()[:, None]
    x = F.interpolate(x, size=(IMG_SIZE, IMG_SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels).long()


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 3, degrees: float = 15.0) -> torch.Tensor:
    """Each image shifted by up to ±shift px and rotated by up to ±degrees (one affine grid per image)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    offset = (torch.randint(-shift, shift + 1, (n, 2), generator=generator).float() * 2 / x.shape[-1])
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def split(seed: int = 0):
    """(pool images, pool labels, bank rows of the pool, query images (augmented), query labels)."""
    x, y = upscaled()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    query_rows, pool_rows = order[:QUERIES], order[QUERIES:]
    pool_x, pool_y = x[pool_rows], y[pool_rows]
    bank = torch.cat([torch.nonzero(pool_y == c).flatten()[:BANK_PER_CLASS] for c in range(10)])
    queries = augment(x[query_rows], torch.Generator().manual_seed(seed + 5))
    return pool_x, pool_y, bank, queries, y[query_rows]


def write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """An ImageFolder tree of RGB PNGs (class subfolders 0..9)."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def write_data(root: Path, seed: int = 0) -> dict:
    """The protocol's three folders under `root`: pool (pretraining), bank and queries (the k-NN)."""
    pool_x, pool_y, bank, queries, query_y = split(seed)
    return {"pool": write_folder(root / "pool", pool_x, pool_y), "pool_x": pool_x, "pool_y": pool_y,
            "bank": write_folder(root / "bank", pool_x[bank], pool_y[bank]), "bank_x": pool_x[bank],
            "bank_y": pool_y[bank], "queries": write_folder(root / "queries", queries, query_y),
            "query_x": queries, "query_y": query_y}


# --- the teacher -------------------------------------------------------------------------------------------
def vit_kwargs() -> dict:
    return dict(img_size=IMG_SIZE, patch_size=PATCH, **VIT)


def train_teacher(pool_x: torch.Tensor, pool_y: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """A supervised ViT on the pool's labels (AdamW, augmented batches); its weights, without the heads, to
    `path`. Two heads share the loss, one on the CLS token and one on the mean of the patch tokens, so that its
    patch features carry the classes too, as a CLIP teacher's do (MaskDistill distills those)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, **vit_kwargs())
    patch_head = torch.nn.Linear(VIT["embed_dim"], 10)
    parameters = [*model.parameters(), *patch_head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=TEACHER_STEPS, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed + 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    model.train()
    for _ in range(TEACHER_STEPS):
        rows = torch.randint(0, len(pool_y), (128,), generator=generator)
        tokens = model.forward_features((augment(pool_x[rows], generator) - mean) / std)
        labels = pool_y[rows]
        loss = (F.cross_entropy(model.forward_head(tokens), labels)
                + F.cross_entropy(patch_head(tokens[:, model.num_prefix_tokens:].mean(1)), labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(state, str(path))
    return path


# --- fine-tuning -------------------------------------------------------------------------------------------
FINETUNE_EPOCHS = 40  # 100 labelled images, 4 steps an epoch
FINETUNE_SETS = ["data.batch_size=25", "data.workers=0", f"data.img_size={IMG_SIZE}", f"data.mean={list(MEAN)}",
                 "data.scale=[0.5, 1.0]", "data.hflip=0.0",  # as in pretraining: a digit survives the crop, unflipped
                 f"data.std={list(STD)}", "data.val_batch_size=300", "optim.base_lr=5e-3", "optim.warmup_epochs=5",
                 "method.layer_decay=0.75", "method.mixup=0.0", "method.cutmix=0.0", "train.log_every=20",
                 f"train.val_every_epochs={FINETUNE_EPOCHS}"]  # scored once, at the end


def finetune_args(init: Path | None, data: dict, output: Path) -> list[str]:
    """The `python -m fastmim.finetune` arguments: from a pretraining run's last.pt, or from random weights (the
    same ViT as the students)."""
    start = (["--init", str(init)] if init is not None else
             ["--set", "method.model=vit_tiny_patch16_224", "--set", f"method.model_kwargs={json.dumps(dict(patch_size=PATCH, **VIT))}"])
    return ["--recipe", "demo_finetune", "--data", str(data["bank"]), "--val", str(data["queries"]),
            "--epochs", str(FINETUNE_EPOCHS), "--output", str(output), "--resume", "never", *start,
            *[a for s in FINETUNE_SETS for a in ("--set", s)]]


def finetuned_top1(init: Path | None, data: dict, output: Path) -> tuple[float, float]:
    """(top-1 % on the 600 queries at the end of fine-tuning, seconds the run took)."""
    from fastmim.finetune import main

    start = time.perf_counter()
    assert main(finetune_args(init, data, output)) == 0
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("val_top1") is not None][-1]["val_top1"], seconds


# --- measuring -----------------------------------------------------------------------------------------------
def monitor_config(data: dict, pooling: str = "cls"):
    from fastmim.config import EvalConfig

    return EvalConfig(train=str(data["bank"]), val=str(data["queries"]), per_class=BANK_PER_CLASS,
                      val_per_class=QUERIES, batch_size=256, workers=0, pooling=pooling, **KNN)


def knn_of(model: torch.nn.Module, data: dict, pooling: str = "cls") -> float:
    """k-NN top-1 (%) of `model`'s features, through the same monitor the pretraining runs use."""
    import contextlib

    from fastmim.data_config import ImageSpec
    from fastmim.train.monitor import KnnMonitor

    monitor = KnnMonitor(monitor_config(data, pooling), ImageSpec(IMG_SIZE, MEAN, STD), rank=0, world_size=1)
    return monitor.evaluate(model, torch.device("cpu"), contextlib.nullcontext())["knn_top1"]


def teacher_model(weights: Path):
    import timm
    from safetensors.torch import load_file

    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **vit_kwargs())
    model.load_state_dict(load_file(str(weights)))
    return model


def random_student(method: str = "maskalign", seed: int = 0):
    """The student a pretraining run starts from (same recipe, seed and overrides), untrained."""
    from fastmim.methods.registry import build_method

    cfg = pretrain_config(method, teacher_weights="random", output="unused")
    torch.manual_seed(seed)
    return build_method(cfg.method, cfg.data.image).student


def pretrain_args(method: str, data: dict, teacher_weights: str, output: Path) -> list[str]:
    """The `python -m fastmim.pretrain` arguments of one method's run in this protocol."""
    recipe, epochs, pooling, extra = PRETRAIN[method]
    teacher = [] if method == "mae" else ["--teacher", "vit_tiny_patch16_224", "--teacher-weights", teacher_weights]
    teacher_kwargs = [] if method == "mae" else [f"method.teacher_kwargs={json.dumps(dict(patch_size=PATCH, **VIT))}"]
    sets = [f"method.patch_size={PATCH}", "method.student=tiny", f"method.student_kwargs={json.dumps(VIT)}",
            *teacher_kwargs,
            f"data.img_size={IMG_SIZE}", "data.batch_size=64", "data.workers=0", "data.scale=[0.5, 1.0]",
            "data.hflip=0.0", f"data.mean={list(MEAN)}", f"data.std={list(STD)}", "train.log_every=18",
            "eval.every=180", f"eval.per_class={BANK_PER_CLASS}", f"eval.val_per_class={QUERIES}",
            f"eval.pooling={pooling}", "eval.workers=0", "train.picture_every=0", *extra]
    return ["--recipe", recipe, "--data", str(data["pool"]), "--data-backend", "torchvision", "--epochs",
            str(epochs), "--output", str(output), *teacher, "--eval-train", str(data["bank"]),
            "--eval-val", str(data["queries"]), *[a for s in sets for a in ("--set", s)]]


def pretrain_config(method: str, teacher_weights: str, output: str):
    from fastmim.pretrain import build_parser, resolve_config

    fake = {"pool": "pool", "bank": "bank", "queries": "queries"}
    return resolve_config(build_parser().parse_args(pretrain_args(method, fake, teacher_weights, Path(output))))


def pretrained_knn(method: str, data: dict, teacher_weights: Path, output: Path) -> tuple[float, float]:
    """(k-NN top-1 at the end of the run from its metrics.jsonl, seconds the run took)."""
    from fastmim.pretrain import main

    start = time.perf_counter()
    assert main(pretrain_args(method, data, str(teacher_weights), output)) == 0
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if r.get("knn_top1") is not None]
    return evaluated[-1]["knn_top1"], seconds


def pixels_knn(data: dict) -> float:
    """k-NN top-1 (%) of the raw pixels (for reference: what features must beat)."""
    from fastmim.eval.knn import knn_accuracy

    bank, queries = data["bank_x"].flatten(1), data["query_x"].flatten(1)
    return knn_accuracy(bank - 0.5, data["bank_y"], queries - 0.5, data["query_y"], **KNN)[0]


def cpu() -> str:
    from fastmim.doctor import cpu_description

    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.exists() else []
    return f"{names[0] if names else platform.machine()} ({cpu_description()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.eval.real_data", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="maskalign,mrmae,maskdistill,mae")
    parser.add_argument("--work", default="/tmp/fastmim-real-data", help="folder for the images and the runs")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work / "digits")
    start = time.perf_counter()
    weights = train_teacher(data["pool_x"], data["pool_y"], work / "teacher.safetensors")
    rows = {"teacher (supervised, trained here)": (knn_of(teacher_model(weights), data), time.perf_counter() - start)}
    rows["raw pixels"] = (pixels_knn(data), 0.0)
    tuned = {"random weights": finetuned_top1(None, data, work / "finetune_random")}
    for method in args.methods.split(","):
        pooling = PRETRAIN[method][2]
        rows[f"{method}: random student ({pooling})"] = (knn_of(random_student(method), data, pooling), 0.0)
        run = work / f"run_{method}"
        rows[f"{method}: pretrained student ({pooling})"] = pretrained_knn(method, data, weights, run)
        tuned[f"{method} pretrained"] = finetuned_top1(run / "checkpoints" / "last.pt", data, work / f"finetune_{method}")
    for name, (top1, seconds) in rows.items():
        print(f"{name:44} k-NN top-1 {top1:6.2f} %   ({seconds:.0f} s)")
    for name, (top1, seconds) in tuned.items():
        print(f"fine-tuned from {name:28} top-1 {top1:6.2f} %   ({seconds:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "protocol": "digits 32 px, bank 10/class, 600 augmented queries, k=20, T=0.07; fine-tuning on the bank "
                        f"for {FINETUNE_EPOCHS} epochs ({' '.join(FINETUNE_SETS)}), top-1 on the queries at the end",
            "cpu": cpu(), "torch": torch.__version__,
            "top1": {name: top1 for name, (top1, _) in rows.items()},
            "seconds": {name: round(seconds, 1) for name, (_, seconds) in rows.items()},
            "finetune_top1": {name: top1 for name, (top1, _) in tuned.items()},
            "finetune_seconds": {name: round(seconds, 1) for name, (_, seconds) in tuned.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
