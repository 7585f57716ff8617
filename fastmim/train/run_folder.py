"""The output folder of a run: whether it holds one, and clearing it when the user asks (train.overwrite)."""
from __future__ import annotations

import shutil
from pathlib import Path

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "loss_curve.png")
RUN_FOLDERS = ("checkpoints", "tensorboard")


def check_output(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {str(folder)!r} is a file, not a folder")


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (*RUN_FILES, *RUN_FOLDERS))


def clear_run(folder: Path) -> None:
    """Remove what a run writes (nothing else the folder holds)."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)
