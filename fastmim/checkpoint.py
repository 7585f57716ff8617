"""A run's checkpoint: its layout, written and read here only (the trainer writes it; resume, `fastmim.export`,
`fastmim.evaluate` and the pictures read it through these functions).

A checkpoint is one `torch.save`d dict:

    method_name      the method that trained it (fastmim.methods.configs)
    method           the method's state dict: the student under `student.`, then heads, decoder, …
    optimizer        the optimizer's state dict
    ema, best        optional: the EMA copy's state dict (train.ema_decay), the best evaluation so far
    student_timm     the timm model the student is: {'model': name, 'kwargs': {...}} (export, evaluate, init)
    step             optimizer steps done
    loaders, rng     per process, in rank order: the data loader's position and the RNG states (exact resume)
    world_size       the number of processes that wrote it
    skipped_images   unreadable images skipped so far, all processes together
    nonfinite_steps  steps skipped for a non-finite loss so far
    config           the run's configuration (fastmim.config.to_dict)

Files are written atomically (a temporary file in the same folder, fsync, then rename), so that
`checkpoints/last.pt` is always a complete, loadable file, whatever interrupts the write.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fastmim.config import Config, from_dict

LAST = "last.pt"
BEST = "best.pt"
STUDENT = "student."
PRETRAINING_ONLY = ("mask_token",)  # the dense student's token for masked patches: timm's ViT has none


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (truncated, not a checkpoint): a usage error naming the file."""


def training_state(*, method_name: str, method: dict, optimizer: dict, step: int, processes: list[dict],
                   skipped_images: int, nonfinite_steps: int, config: dict, **optional) -> dict:
    """The checkpoint of a training run; `processes`: every process's {'loader', 'rng'}, in rank order.
    optional: `ema` (the EMA copy's state dict, with train.ema_decay), `best` ({'value', 'step'} of the metric
    best.pt is kept by)."""
    return {"method_name": method_name, "method": method, "optimizer": optimizer, "step": step,
            "loaders": [p["loader"] for p in processes], "rng": [p["rng"] for p in processes],
            "world_size": len(processes), "skipped_images": skipped_images, "nonfinite_steps": nonfinite_steps,
            "config": config, **optional}


def process_state(checkpoint: dict, rank: int) -> dict:
    """{'loader', 'rng'} that process `rank` saved."""
    return {"loader": checkpoint["loaders"][rank], "rng": checkpoint["rng"][rank]}


def atomic_write(write, path: Path) -> None:
    """`write(tmp)` into a temporary file beside `path`, flushed to disk, then renamed over `path`: readers see the
    old file or the new one, never a mix, and nothing is left behind when the write fails. The file gets the
    permissions a new file gets (the umask's), whatever wrote it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)  # atomic on POSIX
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj, path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(write, path)


def save_checkpoint(state: dict, folder: Path, step: int, keep: int) -> Path:
    """Write step_<N>.pt and last.pt; keep the newest `keep` step files."""
    folder = Path(folder)
    step_path = folder / f"step_{step:08d}.pt"
    if keep > 0:
        atomic_save(state, step_path)
    atomic_save(state, folder / LAST)
    if keep > 0:
        for old in sorted(folder.glob("step_*.pt"))[:-keep]:
            old.unlink()
    return folder / LAST


def save_best(state: dict, folder: Path) -> Path:
    """best.pt: the checkpoint of the step whose evaluation is the best so far (fine-tuning's val_top1)."""
    atomic_save(state, Path(folder) / BEST)
    return Path(folder) / BEST


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = read_or_none(path)
    if state is None:
        other = newest_readable(path)
        hint = f"; the newest readable checkpoint beside it is {str(other)!r}" if other else ""
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read (truncated or not a checkpoint){hint}")
    if not isinstance(state, dict) or "method" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a fastmim checkpoint")
    return state


def read_or_none(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # truncated, garbage, another format: every reader's failure means the same here
        return None


def newest_readable(path: Path) -> Path | None:
    """The newest step checkpoint in `path`'s folder, other than `path`, that loads."""
    for other in sorted(Path(path).parent.glob("step_*.pt"), reverse=True):
        if other.resolve() != Path(path).resolve() and isinstance(read_or_none(other), dict):
            return other
    return None


def resolve_resume(resume: str, folder: Path) -> Path | None:
    """auto: last.pt if there is one; never: start fresh; anything else: that file, which must exist."""
    if resume == "never":
        return None
    if resume == "auto":
        last = Path(folder) / LAST
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint file")
    return path


def read_config(checkpoint: dict, path: Path | str = "the checkpoint") -> Config:
    """The configuration the run was saved with (with today's defaults for fields added since)."""
    if "config" not in checkpoint:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no configuration (written by an old fastmim)")
    return from_dict(checkpoint["config"])


def student_weights(checkpoint: dict, pretraining_only: bool = True) -> dict[str, torch.Tensor]:
    """The student's state dict (timm's keys); without `pretraining_only`, what timm's ViT has no place for
    (the mask token) is left out."""
    return {k[len(STUDENT):]: v.contiguous() for k, v in checkpoint["method"].items()
            if k.startswith(STUDENT) and (pretraining_only or k[len(STUDENT):] not in PRETRAINING_ONLY)}


def student_arguments(method, img_size: int) -> dict:
    """The arguments of fastmim.models.vit.vit_model that rebuild a pretraining method's student (`method`: its
    configuration; layer scale where it has one; the mask token is the caller's choice)."""
    return dict(size=method.student, img_size=img_size, patch_size=method.patch_size,
                init_values=getattr(method, "init_values", None) or None, **method.student_kwargs)


def timm_student(method, img_size: int) -> tuple[str, dict]:
    """(timm model name, keyword arguments) of a pretraining run's student: its size's timm name at its patch
    size where timm has one (else the size's /16 or /14 model with patch_size); img_size when it is not 224,
    init_values when it has layer scale."""
    import timm

    args = student_arguments(method, img_size)
    size, patch, img = args.pop("size"), args.pop("patch_size"), args.pop("img_size")
    kwargs = {k: v for k, v in args.items() if v is not None}
    names = [f"vit_{size}_patch{p}_224" for p in (patch, 16, 14)]
    name = next((n for n in names if timm.is_model(n)), names[0])
    if name != names[0]:
        kwargs["patch_size"] = patch  # e.g. ViT-H/16: timm names ViT-H/14 only
    if img != 224:
        kwargs["img_size"] = img
    return name, kwargs


def student_timm(checkpoint: dict) -> tuple[str, dict]:
    """The timm model (name, keyword arguments) the checkpoint's student is: as the run recorded it
    (`student_timm`, written since fine-tuning students are timm models), else from its configuration."""
    if "student_timm" in checkpoint:
        return checkpoint["student_timm"]["model"], dict(checkpoint["student_timm"]["kwargs"])
    cfg = read_config(checkpoint)
    return timm_student(cfg.method, cfg.data.img_size)
