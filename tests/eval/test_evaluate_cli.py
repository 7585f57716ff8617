"""`python -m fastmim.evaluate` on a fastmim checkpoint, on its export and on a timm name with --weights, on
real images (scikit-learn's digits): a table, JSON, and the same features (so the same k-NN) from a checkpoint
and from its export; errors are one line with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from fastmim.evaluate import main
from fastmim.export import main as export_main
from fastmim.pretrain import main as pretrain_main

from .digits import write_digits


@pytest.fixture(scope="module")
def digits_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return write_digits(root, size=64, per_class=10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert pretrain_main(["--max-steps", "3", "--set", "data.workers=0", "--output", str(out)]) == 0
    return out / "checkpoints" / "last.pt"


def run_eval(*args, out):
    assert main([*args, "--workers", "0", "--batch-size", "256", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_checkpoint_and_its_export_give_the_same_knn(tmp_path, digits_folders, trained, capsys):
    train, val = digits_folders
    from_checkpoint = run_eval("knn", str(trained), "--train", str(train), "--val", str(val), out=tmp_path / "a.json")
    export_main([str(trained), "--out", str(tmp_path / "student.safetensors")])
    from_export = run_eval("knn", str(tmp_path / "student.safetensors"), "--train", str(train), "--val", str(val),
                           out=tmp_path / "b.json")
    assert from_checkpoint["train_images"] == 100 and from_checkpoint["val_images"] == 1697
    assert from_checkpoint["classes"] == 10 and 10 < from_checkpoint["top1"] <= from_checkpoint["top5"] <= 100
    assert from_export["top1"] == pytest.approx(from_checkpoint["top1"], abs=0.2)
    assert "top-1 %" in capsys.readouterr().out


def test_a_timm_name_with_weights_and_the_linear_probe(tmp_path, digits_folders):
    train, val = digits_folders
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    result = run_eval("linear", "vit_tiny_patch16_224", "--weights", str(tmp_path / "w.safetensors"),
                      "--img-size", "64", "--epochs", "20", "--probe-batch", "100", "--base-lr", "1.0",
                      "--train", str(train), "--val", str(val), out=tmp_path / "c.json")
    assert result["protocol"] == "linear" and 10 < result["top1"] <= 100


@pytest.mark.parametrize("args, words", [
    (["knn", "missing.pt", "--train", ".", "--val", "."], "no such checkpoint"),
    (["knn", "vit_tiny_patch16_224", "--train", ".", "--val", "."], "--weights FILE"),
    (["knn", "vit_tiny_patch16_224", "--weights", "w.pth", "--train", "/nonexistent", "--val", "."],
     "--train '/nonexistent': not a folder"),
    (["knn", "vit_tiny_patch16_224", "--weights", "w.pth", "--train", ".", "--val", ".", "--k", "0"],
     "--k must be at least 1"),
])
def test_errors_are_one_line(args, words):
    result = subprocess.run([sys.executable, "-m", "fastmim.evaluate", *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("python -m fastmim.evaluate: error:") and words in result.stderr, result.stderr


def test_torchrun_extracts_shares_and_scores_like_one_process(tmp_path, digits_folders, trained):
    """Two processes each extract every other image (849 and 848 of the 1,697 queries: no padding) and rank 0
    scores them all: the same images and the same top-1 as one process."""
    import os

    train, val = digits_folders
    alone = run_eval("knn", str(trained), "--train", str(train), "--val", str(val), out=tmp_path / "one.json")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fastmim.evaluate", "knn", str(trained), "--train", str(train), "--val", str(val),
               "--workers", "0", "--out", str(tmp_path / "two.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    both = json.loads((tmp_path / "two.json").read_text())
    assert (both["train_images"], both["val_images"]) == (alone["train_images"], alone["val_images"])
    assert both["top1"] == pytest.approx(alone["top1"], abs=0.1)
    assert both["top5"] == pytest.approx(alone["top5"], abs=0.1)
    assert result.stdout.count("top-1 %") == 1  # one table, from rank 0
