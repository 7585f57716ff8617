"""The output folder of a run: whether it holds one, and clearing it when the user asks (train.overwrite)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "loss_curve.png")
RUN_FOLDERS = ("checkpoints", "tensorboard", "pictures")


def check_output(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {str(folder)!r} is a file, not a folder")


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (*RUN_FILES, *RUN_FOLDERS))


def last_logged_step(folder: Path) -> int | None:
    """The step of the run's last metrics line (read without loading a checkpoint), None without one."""
    try:
        lines = [line for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return json.loads(lines[-1])["step"] if lines else None
    except (OSError, ValueError, KeyError):
        return None


def clear_run(folder: Path) -> str:
    """Remove what a run writes (nothing else the folder holds); what was removed, in words."""
    step = last_logged_step(folder)
    removed = [name for name in RUN_FILES if (folder / name).exists()]
    removed += [f"{name}/" for name in RUN_FOLDERS if (folder / name).exists()]
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)
    reached = f"it had reached step {step}" if step is not None else "it had logged no step"
    return f"cleared the run in {folder} ({reached}): removed {', '.join(removed)}"
