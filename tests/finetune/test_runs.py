"""Fine-tuning through `python -m fastmim.finetune` on the built-in labelled set: the demo learns; resume is exact
(losses and validation accuracies); two processes count the same validation images as one; the export loads
strictly into timm and `fastmim.evaluate` reads it; best.pt is kept; bad input is one error line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from fastmim.checkpoint import load_checkpoint
from fastmim.export import export
from fastmim.finetune import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--batch-size", "8", "--set", "data.synthetic_images=64", "--set", "data.synthetic_val_images=40",
         "--set", "data.workers=0", "--set", "train.log_every=1", "--epochs", "2"]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str, module: str = "fastmim.finetune", timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_the_demo_learns_and_its_export_loads_into_timm_and_evaluate(tmp_path):
    """demo_finetune as `python -m fastmim.finetune` runs it: the loss falls, the last validation is above chance."""
    assert main(["--output", str(tmp_path / "run")]) == 0
    records = metrics(tmp_path / "run")
    tenth = max(1, len(records) // 10)
    first = sum(r["loss"] for r in records[:tenth]) / tenth
    last = sum(r["loss"] for r in records[-tenth:]) / tenth
    assert last < first, (first, last)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_top1"] > 100 / 3 + 3, summary  # 3 classes: chance is 33 %
    assert summary["seconds"] < 180, summary  # the demo's promise: under 3 minutes on a 2-core CPU
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    call = export(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "classifier.safetensors")
    model = eval(call, {"timm": timm})  # strict: the trained head and fc_norm included
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["method"]
    torch.testing.assert_close(model.head.weight, trained["student.head.weight"])
    folders = tmp_path / "knn"
    from tests.eval.digits import write_digits

    train, val = write_digits(folders, size=64, per_class=3)
    result = cli("knn", str(tmp_path / "classifier.safetensors"), "--train", str(train), "--val", str(val),
                 "--workers", "0", module="fastmim.evaluate")
    assert result.returncode == 0 and "top-1" in result.stdout, result.stderr[-2000:]


def test_a_resumed_run_reproduces_the_losses_and_validation(tmp_path):
    assert main([*SMALL, "--output", str(tmp_path / "whole")]) == 0
    assert main([*SMALL, "--output", str(tmp_path / "parts"), "--max-steps", "5"]) == 0
    assert main([*SMALL, "--output", str(tmp_path / "parts")]) == 0
    whole, parts = metrics(tmp_path / "whole"), metrics(tmp_path / "parts")
    assert [m["step"] for m in parts] == [m["step"] for m in whole] == list(range(1, 17))
    for a, b in zip(whole, parts):
        for key in ("loss", "lr", "grad_norm", "val_top1", "val_top5", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)
    assert [m["step"] for m in whole if "val_top1" in m] == [8, 16]  # every epoch and the end


def test_two_processes_count_the_same_validation_images_as_one(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fastmim.finetune", *SMALL, "--output", str(tmp_path / "two")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert main([*SMALL, "--output", str(tmp_path / "one")]) == 0
    two = [m for m in metrics(tmp_path / "two") if "val_images" in m]
    one = [m for m in metrics(tmp_path / "one") if "val_images" in m]
    assert [m["val_images"] for m in two] == [m["val_images"] for m in one] == [40, 40]


@pytest.mark.parametrize("args, words", [
    (["--init", "missing.pt"], "no such checkpoint"),
    (["--init", "resnet18", "--weights", "w.pth"], "not a timm VisionTransformer"),
    (["--data", "/no/such/folder"], "does not exist"),
    (["--val", "/no/such/folder"], "no such folder"),
    (["--set", "data.img_size=60"], "not a multiple of the model's patch size"),
])
def test_bad_input_is_one_error_line_and_nothing_is_written(tmp_path, args, words):
    result = cli(*SMALL, *args, "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_a_validation_class_absent_from_training_is_an_error(tmp_path):
    from PIL import Image

    for root, classes in ((tmp_path / "train", ("a", "b")), (tmp_path / "val", ("a", "c"))):
        for name in classes:
            (root / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    result = cli("--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--output", str(tmp_path / "run"),
                 "--batch-size", "4")
    assert result.returncode == 2 and "has classes the training set lacks: c" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_the_pretraining_command_refuses_a_finetuning_recipe_and_the_other_way_round():
    assert "python -m fastmim.finetune" in cli("--recipe", "demo_finetune", module="fastmim.pretrain").stderr
    result = cli("--config", str(ROOT / "nonexistent.yaml"))
    assert result.returncode == 2


def test_the_ema_is_validated_alongside_saved_and_resumed_exactly(tmp_path):
    ema = [*SMALL, "--set", "train.ema_decay=0.9"]
    assert main([*ema, "--output", str(tmp_path / "whole")]) == 0
    assert main([*ema, "--output", str(tmp_path / "parts"), "--max-steps", "5"]) == 0
    assert "ema" in load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")
    assert main([*ema, "--output", str(tmp_path / "parts")]) == 0
    whole = [m for m in metrics(tmp_path / "whole") if "val_ema_top1" in m]
    parts = [m for m in metrics(tmp_path / "parts") if "val_ema_top1" in m and m["step"] != 5]  # 5: where it stopped
    assert [m["step"] for m in whole] == [m["step"] for m in parts] == [8, 16]
    for a, b in zip(whole, parts):
        assert b["val_ema_loss"] == pytest.approx(a["val_ema_loss"], rel=1e-6)
        assert a["val_ema_loss"] != a["val_loss"]  # the average is another model than the trained one


def test_dali_is_refused_for_fine_tuning_with_what_to_set(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / "train" / name / f"{i}.png")
    result = cli("--data", str(tmp_path / "train"), "--set", "data.backend=dali", "--output", str(tmp_path / "run"),
                 "--batch-size", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "set data.backend to torchvision or auto" in result.stderr or "needs NVIDIA DALI" in result.stderr
    assert not (tmp_path / "run").exists()


def test_validation_every_few_epochs(tmp_path):
    assert main([*SMALL, "--epochs", "3", "--set", "train.val_every_epochs=2", "--output", str(tmp_path / "run")]) == 0
    assert [m["step"] for m in metrics(tmp_path / "run") if "val_top1" in m] == [16, 24]  # epoch 2, and the end
