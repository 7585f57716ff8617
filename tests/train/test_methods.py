"""Every method through the trainer (the CPU demos): the loss falls, a resumed run reproduces the uninterrupted
one, two processes train together, the exported student loads into timm, and the run records its method."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from fastmim.export import main as export_main
from fastmim.export import student_state_dict
from fastmim.pretrain import main
from fastmim.train.checkpoint import load_checkpoint
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


@pytest.mark.parametrize("recipe", DEMOS)
def test_resumed_run_reproduces_the_uninterrupted_losses(tmp_path, recipe):
    """20 steps and a resume to 40 equal 40 in one go (16 steps per epoch: mid-epoch, then two boundaries)."""
    pretrain(tmp_path / "straight", "--recipe", recipe, "--max-steps", "40")
    pretrain(tmp_path / "split", "--recipe", recipe, "--max-steps", "20")
    pretrain(tmp_path / "split", "--recipe", recipe, "--max-steps", "40")
    straight, split = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [m["step"] for m in split] == list(range(1, 41))
    for a, b in zip(straight[20:], split[20:]):
        for key in ("loss", *DEMOS[recipe], "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), (a["step"], key)


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


@pytest.mark.parametrize("recipe", ["demo_mae", "demo_mrmae", "demo_maskdistill"])
def test_exported_student_loads_into_timm(tmp_path, recipe, capsys):
    """With the call the export prints (timm's vit_tiny_patch16_224 at 64 px; layer scale for MaskDistill)."""
    pretrain(tmp_path, "--recipe", recipe, "--max-steps", "2", "--set", "method.student_kwargs={}",
             "--set", "method.patch_size=16")
    out = tmp_path / "student.safetensors"
    export_main([str(tmp_path / "checkpoints" / "last.pt"), "--out", str(out)])
    call = capsys.readouterr().out.strip().split("load it with ")[1]
    layer_scale = recipe == "demo_maskdistill"
    assert ("init_values=0.1" in call) == layer_scale, call
    model = eval(call, {"timm": timm})  # strict load: no missing or unexpected key
    trained = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["method"]
    torch.testing.assert_close(model.norm.weight, trained["student.norm.weight"])  # the final norm trains
    if layer_scale:
        torch.testing.assert_close(model.blocks[1].ls2.gamma, trained["student.blocks.1.ls2.gamma"])
    assert not any(k.startswith(("decoder", "mimic", "mask_token")) for k in load_file(str(out)))


def test_mae_vit_base_encoder_is_timms_vit_base_patch16_224():
    from fastmim.methods.configs import MAEConfig
    from fastmim.methods.mae import MAE

    state = student_state_dict({"method": MAE(MAEConfig(student="base", decoder_depth=1)).state_dict()})
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
