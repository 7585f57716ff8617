"""Learning on real images, end to end on the CPU: scikit-learn's digits (real handwritten digits, no download),
a teacher ViT trained here with labels (seconds), each method's student pretrained through
`python -m fastmim.pretrain` on the unlabelled images with that teacher, and fastmim's own k-NN.

Protocol (chosen so that features matter, not pixels): the k-NN bank is 10 labelled images per digit; the
queries are the held-out digits shifted by up to 3 of 32 pixels and rotated by up to 15 degrees, which raw
pixels and a random network handle badly and the teacher (trained with the same augmentation) handles well."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fastmim.eval import knn_accuracy

from .digits import digits, write_split

SIZE, PATCH = 32, 8
TEACHER = dict(patch_size=PATCH, embed_dim=64, depth=4, num_heads=2)  # timm vit_tiny_patch16_224 overrides
STUDENT = dict(embed_dim=64, depth=4, num_heads=2)
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def tensors(images: np.ndarray) -> torch.Tensor:
    """[N, 3, 32, 32] normalized like the pretraining data (mean 0.5, std 0.5)."""
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
    return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator, shift: float = 3, degrees: float = 15) -> torch.Tensor:
    """Random translations (up to `shift` pixels) and rotations (up to `degrees`), background kept."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    move = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift * 2 / SIZE
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    theta[:, :, 2] = move
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # pad with background (-1)


def split(per_class: int = 10, seed: int = 0):
    """(bank images, bank labels, pretraining images, query images, query labels): the bank and the queries are
    disjoint; the unlabelled pretraining set is everything but the queries."""
    images, labels = digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    queries, rest = order[:600], order[600:]
    bank = np.concatenate([rest[labels[rest] == c][:per_class] for c in range(10)])
    return images[bank], labels[bank], images[rest], images[queries], labels[queries]


def train_teacher(images: np.ndarray, labels: np.ndarray, out: Path, steps: int = 400, seed: int = 0) -> Path:
    """A small supervised ViT (timm's) on the labelled digits with the queries' augmentation; its weights."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", img_size=SIZE, num_classes=10, **TEACHER)
    x, y = tensors(images), torch.tensor(labels)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    for step in range(steps):
        rows = torch.randint(len(y), (128,), generator=g)
        loss = F.cross_entropy(model(augment(x[rows], g)), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(state, str(out))
    return out


@torch.no_grad()
def cls_features(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    tokens = model.encode(x) if hasattr(model, "encode") else model.forward_features(x)
    return tokens[:, 0]


def knn_top1(model, bank_x, bank_y, query_x, query_y) -> float:
    return knn_accuracy(cls_features(model, bank_x), torch.tensor(bank_y), cls_features(model, query_x),
                        torch.tensor(query_y))[0]


def pixels_top1(bank_x, bank_y, query_x, query_y) -> float:
    return knn_accuracy(bank_x.flatten(1), torch.tensor(bank_y), query_x.flatten(1), torch.tensor(query_y))[0]


def write_pretraining_folder(images: np.ndarray, root: Path) -> Path:
    return write_split(root, images, np.zeros(len(images), dtype=int), SIZE)  # one "class": unlabelled


def pretrain_args(recipe: str, data: Path, teacher_weights: Path, output: Path, epochs: int = 20) -> list[str]:
    """`python -m fastmim.pretrain` arguments: the method's CPU demo at 32 px (patches of 8), on the digits, with
    the trained teacher."""
    teacher = recipe != "demo_mae"
    args = ["--recipe", recipe, "--data", str(data), "--data-backend", "torchvision", "--output", str(output),
            "--epochs", str(epochs), "--batch-size", "64",
            "--set", f"data.img_size={SIZE}", "--set", "data.scale=[0.5, 1.0]", "--set", "data.hflip=0",
            "--set", f"data.mean={list(MEAN)}", "--set", f"data.std={list(STD)}", "--set", "data.workers=0",
            "--set", f"method.img_size={SIZE}", "--set", f"method.patch_size={PATCH}",
            "--set", f"method.student_kwargs={STUDENT}", "--set", "train.log_every=20"]
    if teacher:
        args += ["--teacher", "vit_tiny_patch16_224", "--teacher-weights", str(teacher_weights),
                 "--set", f"method.teacher_kwargs={TEACHER}",
                 "--set", f"method.data_mean={list(MEAN)}", "--set", f"method.data_std={list(STD)}"]
    return args


def pretrained_student(output: Path):
    from fastmim.eval.models import from_checkpoint

    return from_checkpoint(output / "checkpoints" / "last.pt").model
