"""End-of-run outputs: summary.json, the loss-curve picture and a rich summary table."""
from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table


def finite_or_none(value):
    """JSON has no NaN or infinity: a value that is not finite is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_summary(folder: Path, summary: dict) -> None:
    clean = {key: finite_or_none(value) for key, value in summary.items()}
    (Path(folder) / "summary.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")


def plot_loss_curve(folder: Path, metrics: list[dict]) -> Path | None:
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, [float("nan") if m["loss"] is None else m["loss"] for m in metrics], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("pretraining loss")
    ax.grid(alpha=0.3)
    path = Path(folder) / "loss_curve.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def print_summary(summary: dict, console: Console | None = None) -> None:
    table = Table(title="fastmim pretraining summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    (console or Console()).print(table)
