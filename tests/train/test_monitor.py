"""The k-NN monitor during pretraining: knn_top1/knn_top5 in metrics.jsonl at every eval.every steps and at the
end, the same values after a resume, no effect on the training itself, its cost in the log, the loss-curve
panel, and one-line errors for a half-given or missing evaluation set."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fastmim.train.monitor import balanced_share

from ..eval.digits import write_digits
from .helpers import metrics, pretrain, summary


@pytest.fixture(scope="module")
def eval_folders(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"), size=64, per_class=10)


def monitored(folders) -> list[str]:
    train, val = folders
    return ["--eval-train", str(train), "--eval-val", str(val), "--set", "eval.every=4", "--set", "eval.workers=0",
            "--set", "eval.per_class=10", "--set", "eval.val_per_class=6", "--set", "train.log_every=3"]


def knn_lines(records: list[dict]) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["knn_top1"], r["knn_top5"]) for r in records if "knn_top1" in r}


def test_balanced_share_takes_each_class_evenly_and_the_shares_partition_the_subset():
    labels = [i % 3 for i in range(30)] + [3] * 2  # classes 0-2 with 10 images, class 3 with 2
    whole = balanced_share(labels, per_class=4, rank=0, world_size=1)
    assert sorted(labels[i] for i in whole) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 2
    shares = [balanced_share(labels, 4, rank, 2) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == whole and not set(shares[0]) & set(shares[1])
    assert [sum(labels[i] == c for i in shares[0]) for c in range(4)] == [2, 2, 2, 1]
    assert balanced_share(labels, 4, 0, 1) == whole  # fixed: the same subset at every evaluation


def test_knn_is_logged_at_every_eval_step_and_the_end(tmp_path, eval_folders, capsys):
    assert pretrain(tmp_path / "run", "--max-steps", "10", *monitored(eval_folders)) == 0
    out = capsys.readouterr().out
    records = metrics(tmp_path / "run")
    knn = knn_lines(records)
    assert sorted(knn) == [4, 8, 10]  # every 4 steps, and the last step
    assert all(0 <= top1 <= top5 <= 100 for top1, top5 in knn.values())
    assert all(r["knn_seconds"] > 0 for r in records if "knn_top1" in r)
    assert [r["step"] for r in records] == [3, 4, 6, 8, 9, 10]  # evaluation steps are logging steps
    assert "k-NN monitor: 100 bank and 60 query images" in out and "k-NN at step 8: top-1" in out
    assert summary(tmp_path / "run")["knn_top1"] == knn[10][0]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0


def test_resume_keeps_the_history_exact_and_the_monitor_leaves_training_alone(tmp_path, eval_folders):
    assert pretrain(tmp_path / "whole", "--max-steps", "16", *monitored(eval_folders)) == 0
    assert pretrain(tmp_path / "parts", "--max-steps", "8", *monitored(eval_folders)) == 0
    assert pretrain(tmp_path / "parts", "--max-steps", "16", *monitored(eval_folders)) == 0
    whole, parts = metrics(tmp_path / "whole"), metrics(tmp_path / "parts")
    assert knn_lines(parts) == knn_lines(whole) and sorted(knn_lines(whole)) == [4, 8, 12, 16]
    assert [r["loss"] for r in parts] == [r["loss"] for r in whole]
    assert pretrain(tmp_path / "plain", "--max-steps", "16", "--set", "train.log_every=1") == 0
    plain = {r["step"]: r["loss"] for r in metrics(tmp_path / "plain")}
    previous = 0
    for record in whole:  # each logged loss is its window's mean: the same steps' losses without the monitor
        window = [plain[step] for step in range(previous + 1, record["step"] + 1)]
        assert record["loss"] == pytest.approx(sum(window) / len(window), rel=1e-6), record["step"]
        previous = record["step"]


def test_the_figures_reach_tensorboard_like_every_metric(tmp_path, monkeypatch):
    from fastmim.train.metrics import MetricsWriter

    scalars = []

    class Recorder:  # stands in for torch's SummaryWriter (the tensorboard package is optional)
        def add_scalar(self, key, value, step):
            scalars.append((key, value, step))

        def close(self):
            pass

    monkeypatch.setattr(MetricsWriter, "_tensorboard", staticmethod(lambda folder: Recorder()))
    writer = MetricsWriter(tmp_path, 0, tensorboard=True)
    writer.write({"step": 8, "loss": 1.5, "knn_top1": 41.0, "knn_top5": 87.5, "knn_seconds": 0.25})
    writer.close()
    assert {("knn_top1", 41.0, 8), ("knn_top5", 87.5, 8), ("knn_seconds", 0.25, 8)} <= set(scalars)


@pytest.mark.parametrize("args, words", [
    (["--eval-train", "."], "needs both eval.train and eval.val: eval.train is set, eval.val is not"),
    (["--eval-train", ".", "--eval-val", "/nonexistent"], "eval.val '/nonexistent' is not a folder"),
    (["--eval-train", ".", "--eval-val", ".", "--set", "eval.every=0"], "eval.every must be at least 1"),
    (["--set", "eval.pooling=max"], "eval.pooling must be one of auto, cls, mean"),
])
def test_bad_evaluation_settings_are_one_line_errors(tmp_path, args, words):
    result = subprocess.run([sys.executable, "-m", "fastmim.pretrain", "--output", str(tmp_path / "run"), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert words in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
