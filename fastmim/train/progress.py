"""Progress on rank 0: a rich progress bar on a terminal, plain log lines otherwise (files, CI, Slurm)."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def describe(m: dict) -> str:
    line = (f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['images_per_sec']:.1f} img/s  "
            f"data wait {100 * m['data_wait']:.0f}%")
    for key in sorted(k for k in m if k.endswith("_top1") and m[k] is not None):  # an evaluation step
        line += f"  {EVALUATION_NAMES.get(key, key)} {m[key]:.1f}%"
    return line


EVALUATION_NAMES = {"knn_top1": "k-NN top-1", "val_top1": "val top-1", "val_ema_top1": "EMA val top-1"}


class ProgressReporter:
    def __init__(self, total_steps: int, start_step: int, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=False)
        self.live = enabled and self.console.is_terminal and sys.stdout.isatty()
        self.total = total_steps
        self.progress = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self.task = self.progress.add_task("steps", total=total_steps, completed=start_step, info="")
            self.progress.start()

    def update(self, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.live:
            self.progress.update(self.task, completed=metrics["step"], info=describe(metrics))
        else:
            self.console.print(f"step {metrics['step']}/{self.total} epoch {metrics['epoch']}  {describe(metrics)}",
                               highlight=False, soft_wrap=True)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
