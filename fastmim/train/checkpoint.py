"""Checkpoints: written atomically (a temporary file in the same folder, fsync, then rename), so that
`checkpoints/last.pt` is always a complete, loadable file, whatever interrupts the write."""
from __future__ import annotations

import os
from pathlib import Path

import torch

LAST = "last.pt"


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never a mix
    finally:
        if tmp.exists():
            tmp.unlink()


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


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (truncated, not a checkpoint): a usage error naming the file."""


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read (truncated or not a checkpoint): "
                              f"{error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a fastmim checkpoint")
    return state


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
