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
    """loss_curve.png: the loss per logged step, and beside it the evaluations' top-1 and top-5 (the k-NN
    monitor's, the validation set's) where the run had them."""
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    scores = sorted({k for m in metrics for k in m if k.endswith(("_top1", "_top5"))})
    fig, axes = plt.subplots(1, 2 if scores else 1, figsize=(11 if scores else 6, 4), dpi=100, squeeze=False)
    loss_axis = axes[0, 0]
    loss_axis.plot([m["step"] for m in metrics], [float("nan") if m["loss"] is None else m["loss"] for m in metrics])
    loss_axis.set(xlabel="step", ylabel="loss", title="training loss")
    loss_axis.grid(alpha=0.3)
    if scores:
        axis = axes[0, 1]
        for key in scores:
            evaluated = [m for m in metrics if m.get(key) is not None]
            axis.plot([m["step"] for m in evaluated], [m[key] for m in evaluated], marker="o" if key.endswith("1")
                      else ".", label=key.replace("_", " "))
        axis.set(xlabel="step", ylabel="accuracy (%)", title="evaluation")
        axis.grid(alpha=0.3)
        axis.legend()
    path = Path(folder) / "loss_curve.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def print_summary(summary: dict, console: Console | None = None) -> None:
    table = Table(title="fastmim run summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    (console or Console()).print(table)
