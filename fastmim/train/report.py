"""End-of-run outputs: summary.json, the loss-curve picture and a rich summary table."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .metrics import json_safe


def write_summary(folder: Path, summary: dict) -> None:
    clean = {key: json_safe(value) for key, value in summary.items()}
    (Path(folder) / "summary.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")


def plot_loss_curve(folder: Path, metrics: list[dict]) -> Path | None:
    """loss_curve.png: the loss per logged step, and beside it the k-NN monitor's top-1 where the run had one."""
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    evaluated = [m for m in metrics if m.get("knn_top1") is not None]
    fig, axes = plt.subplots(1, 2 if evaluated else 1, figsize=(11 if evaluated else 6, 4), dpi=100, squeeze=False)
    loss_axis = axes[0, 0]
    loss_axis.plot([m["step"] for m in metrics], [float("nan") if m["loss"] is None else m["loss"] for m in metrics])
    loss_axis.set(xlabel="step", ylabel="loss", title="pretraining loss")
    loss_axis.grid(alpha=0.3)
    if evaluated:
        knn_axis = axes[0, 1]
        steps = [m["step"] for m in evaluated]
        knn_axis.plot(steps, [m["knn_top1"] for m in evaluated], marker="o", label="top-1")
        knn_axis.plot(steps, [m["knn_top5"] for m in evaluated], marker=".", label="top-5")
        knn_axis.set(xlabel="step", ylabel="accuracy (%)", title="k-NN monitor")
        knn_axis.grid(alpha=0.3)
        knn_axis.legend()
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
