"""The metrics component on its own: a window's figures from the steps' device tensors, non-finite steps counted
and left out of the means, the in-a-row limit, one rule for values that are not finite, and the logging plan."""
import json
import math

import pytest
import torch

from fastmim.train.metrics import (Best, LoggingPlan, MetricsProcessor, MetricsWriter, NonFiniteLossError, Votes,
                                   read_metrics)
from fastmim.train.step import StepResult


class Progress:
    def __init__(self):
        self.records, self.lines = [], []

    def update(self, record):
        self.records.append(record)

    def log(self, line):
        self.lines.append(line)


def step(loss: float, norm: float) -> StepResult:
    found_inf = torch.tensor(0.0 if math.isfinite(loss) else 1.0)
    return StepResult(torch.tensor(loss), {"a": torch.tensor(loss / 2)}, torch.tensor(norm), found_inf)


def processor(tmp_path, log_every=3, stop_step=100, max_nonfinite=3, evaluators=(), best=None):
    progress = Progress()
    metrics = MetricsProcessor(
        plan=LoggingPlan(log_every, stop_step, list(evaluators)), world_size=1, device=torch.device("cpu"),
        writer=MetricsWriter(tmp_path, 0, tensorboard=False), progress=progress, flops_per_image=1e9,
        peak_flops=1e15, max_nonfinite=max_nonfinite, skipped_before=2, nonfinite_before=1, best=best)
    return metrics, progress


class Every:
    """An evaluator due every `every` steps returning fixed fields."""

    def __init__(self, every: int, fields: dict):
        self.every, self.fields = every, fields

    def due(self, step):
        return step % self.every == 0

    def evaluate(self, step):
        return {**self.fields, "step_evaluated": step}

    def describe(self, step, result):
        return f"evaluated at step {step}"


def test_a_window_gives_the_means_of_its_finite_steps(tmp_path):
    metrics, progress = processor(tmp_path)
    for i, (loss, norm) in enumerate([(1.0, 2.0), (math.nan, math.nan), (3.0, 4.0)], start=1):
        decision = metrics.after_step(i, 0, 0.1, step(loss, norm), images=8, skipped=5, votes=Votes())
    assert decision.stop is None and not decision.checkpoint
    record = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert record["step"] == 3 and record["loss"] == 2.0 and record["a"] == 1.0 and record["grad_norm"] == 3.0
    assert record["nonfinite_steps"] == 1 + 1 and record["skipped_images"] == 2 + 5 and record["lr"] == 0.1
    assert 0 < record["mfu"] < 1 and record["images_per_sec"] > 0 and progress.records == [record]
    assert metrics.summary(3, 10, skipped=5)["images"] == 24


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tmp_path):
    metrics, _ = processor(tmp_path, log_every=1, max_nonfinite=2)
    metrics.after_step(1, 0, 0.1, step(math.inf, 1.0), 8, 0, Votes())
    with pytest.raises(NonFiniteLossError, match="not finite for 2 steps in a row"):
        metrics.after_step(2, 0, 0.1, step(math.nan, 1.0), 8, 0, Votes())


def test_a_window_of_only_non_finite_steps_writes_null(tmp_path):
    metrics, _ = processor(tmp_path, log_every=1)
    metrics.after_step(1, 0, 0.1, step(math.nan, math.nan), 8, 0, Votes())
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and json.loads(line)["loss"] is None


def test_one_process_acts_on_its_own_votes_at_every_step(tmp_path):
    metrics, _ = processor(tmp_path, log_every=10)
    decision = metrics.after_step(1, 0, 0.1, step(1.0, 1.0), 8, 0, Votes("SIGINT", True))
    assert decision.stop == "SIGINT" and decision.checkpoint


def test_evaluation_steps_are_logging_steps_and_their_time_is_not_training_time(tmp_path):
    result = {"knn_top1": 50.0, "knn_top5": 90.0, "knn_seconds": 0.0}
    metrics, progress = processor(tmp_path, log_every=100, stop_step=5, evaluators=[Every(2, result)])
    for i in range(1, 6):
        metrics.after_step(i, 0, 0.1, step(1.0, 1.0), 8, 0, Votes())
    assert [r["step"] for r in progress.records] == [2, 4, 5]
    assert [r.get("step_evaluated") for r in progress.records] == [2, 4, None]
    assert progress.lines == ["evaluated at step 2", "evaluated at step 4"]
    assert metrics.summary(5, 10, 0)["knn_top1"] == 50.0 and "knn_seconds" not in metrics.summary(5, 10, 0)


def test_the_best_evaluation_is_flagged_once_per_improvement(tmp_path):
    scores = iter([60.0, 55.0, 70.0])

    class Scores(Every):
        def evaluate(self, step):
            return {"val_top1": next(scores)}

    metrics, _ = processor(tmp_path, log_every=100, evaluators=[Scores(1, {})], best=Best("val_top1"))
    flags = [metrics.after_step(i, 0, 0.1, step(1.0, 1.0), 8, 0, Votes()).best for i in (1, 2, 3)]
    assert flags == [True, False, True] and metrics.best.value == 70.0 and metrics.best.step == 3
