"""The methods' CPU demos through the trainer: the loss falls over the whole demo with every term logged, two
processes train together, and the run records its method (resume and export of every registered method are in
tests/methods/test_contract.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import timm
import yaml

from fastmim.pretrain import main
from fastmim.checkpoint import load_checkpoint, student_weights
from fastmim.data_config import ImageSpec
from tests.train.helpers import metrics, pretrain, summary

DEMOS = {"demo_mae": ("pixel",), "demo_mrmae": ("pixel", "mimic_vit_tiny_patch16_224"), "demo_maskdistill": ("distill",)}


@pytest.mark.parametrize("recipe", DEMOS)
def test_demo_loss_falls_and_logs_every_term(tmp_path, recipe):
    """The demo as `python -m fastmim.pretrain --recipe NAME` runs it: the mean loss of the last tenth of logged
    steps is at most 0.7× that of the first tenth."""
    assert main(["--recipe", recipe, "--output", str(tmp_path)]) == 0
    logged = metrics(tmp_path)
    tenth = max(1, len(logged) // 10)
    first = sum(m["loss"] for m in logged[:tenth]) / tenth
    last = sum(m["loss"] for m in logged[-tenth:]) / tenth
    assert last <= 0.7 * first, (first, last)
    for m in logged:
        assert set(DEMOS[recipe]) <= m.keys()
        assert m["loss"] == pytest.approx(sum(m[term] for term in DEMOS[recipe]), rel=1e-5)  # weights 1
        assert 0 < m["mfu"] < 1
    assert summary(tmp_path)["final_loss"] == logged[-1]["loss"]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["method_name"] == recipe.removeprefix("demo_")
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["method_name"] == recipe.removeprefix("demo_")


def test_resuming_another_methods_run_is_refused(tmp_path, capsys):
    pretrain(tmp_path, "--recipe", "demo_mae", "--max-steps", "2")
    with pytest.raises(SystemExit) as error:
        pretrain(tmp_path, "--recipe", "demo", "--max-steps", "4")
    assert error.value.code == 2 and "was written by a mae run" in capsys.readouterr().err


def test_two_process_torchrun_trains_mrmae(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fastmim.pretrain", "--recipe", "demo_mrmae", "--max-steps", "6", "--batch-size", "8",
               "--set", "data.workers=0", "--output", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    done = json.loads((tmp_path / "summary.json").read_text())
    assert done["steps"] == 6 and done["images"] == 6 * 8 * 2
    assert "mimic_vit_tiny_patch16_224" in metrics(tmp_path)[-1]


def test_mae_vit_base_encoder_is_timms_vit_base_patch16_224():
    from fastmim.methods.configs import MAEConfig
    from fastmim.methods.mae import MAE

    method = MAE(MAEConfig(student="base", decoder_depth=1), ImageSpec(224))
    state = student_weights({"method": method.state_dict()}, pretraining_only=False)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    result = model.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_the_trainer_names_no_method():
    """fastmim/train drives every method through methods/base.py alone: no method's name or class in it."""
    from pathlib import Path

    import fastmim.train
    from fastmim.methods.registry import METHODS

    words = {*METHODS, *(cls.__name__ for cls in METHODS.values()), "teacher", "decoder"}
    for path in Path(fastmim.train.__file__).parent.glob("*.py"):
        code = "\n".join(line.split("#")[0] for line in path.read_text().lower().splitlines())
        found = sorted(w for w in words if w.lower() in code)
        assert not found, (path.name, found)
