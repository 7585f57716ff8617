"""`python -m fastmim.visualize`: the same command twice gives the same bytes, unreadable images are skipped,
the teacher is the run's, and every bad input is one `error:` line, exit code 2, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmim.checkpoint import load_checkpoint, read_config
from fastmim.data.synthetic import SyntheticImages
from fastmim.pretrain import main as pretrain
from fastmim.visualize import build_parser, load_method, main

SMALL = ["--batch-size", "4", "--set", "data.synthetic_images=16", "--set", "data.workers=0", "--max-steps", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two-step runs of the MaskAlign and MAE demos: {method: last.pt}."""
    root = tmp_path_factory.mktemp("runs")
    found = {}
    for method, name in (("maskalign", "demo"), ("mae", "demo_mae")):
        assert pretrain(["--recipe", name, "--output", str(root / method), *SMALL]) == 0
        found[method] = root / method / "checkpoints" / "last.pt"
    return found


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three images (synthetic pictures as PNG files) and one file that is not an image."""
    path = tmp_path_factory.mktemp("images")
    source = SyntheticImages(3, seed=4, size=80)
    for i in range(3):
        source.load(i).save(path / f"picture_{i}.png")
    (path / "broken.jpg").write_bytes(b"not a jpeg")
    return path


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastmim.visualize", *args], capture_output=True, text=True,
                          timeout=600)


def test_the_same_command_twice_writes_the_same_bytes_and_skips_an_unreadable_image(tmp_path, runs, folder):
    outputs = []
    for name in ("a", "b"):
        result = command(str(runs["mae"]), "--images", str(folder), "--out", str(tmp_path / f"{name}.png"),
                         "--out-json", str(tmp_path / f"{name}.json"), "--seed", "3")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "warning: cannot read" in result.stderr and "broken.jpg" in result.stderr
        outputs.append(((tmp_path / f"{name}.png").read_bytes(), (tmp_path / f"{name}.json").read_bytes()))
    assert outputs[0] == outputs[1]
    info = json.loads(outputs[0][1])
    assert [Path(row["name"]).name for row in info["images"]] == ["picture_0.png", "picture_1.png", "picture_2.png"]
    assert info["method"] == "mae" and info["step"] == 2 and info["seed"] == 3
    assert info["columns"] == ["input", "mask", "reconstruction", "+ visible"]
    png = Image.open(tmp_path / "a.png")
    assert png.size[1] > 3 * 128 and all(len(row["reconstruction_mse"]) == 48 for row in info["images"])


def test_n_and_a_single_file(tmp_path, runs, folder, capsys):
    assert main([str(runs["maskalign"]), "--images", str(folder), "--n", "2", "--out-json",
                 str(tmp_path / "two.json"), "--out", str(tmp_path / "two.png")]) == 0
    assert len(json.loads((tmp_path / "two.json").read_text())["images"]) == 2
    assert main([str(runs["maskalign"]), "--images", str(folder / "picture_1.png"), "--out-json",
                 str(tmp_path / "one.json"), "--out", str(tmp_path / "one.png")]) == 0
    info = json.loads((tmp_path / "one.json").read_text())
    assert len(info["images"]) == 1 and info["columns"][2] == "teacher attention"
    assert "wrote" in capsys.readouterr().out


def test_the_teacher_is_the_one_the_run_trained_against(tmp_path, runs):
    """A demo's random teacher is rebuilt as the trainer built it (from the run's seed)."""
    from fastmim.train.trainer import Trainer

    method, cfg, step = load_method(str(runs["maskalign"]), None, torch.device("cpu"))
    cfg.train.output, cfg.train.resume = str(tmp_path / "again"), "never"
    trained = Trainer(cfg).method.teachers[0].state_dict()
    rebuilt = method.teachers[0].state_dict()
    assert step == 2 and trained.keys() == rebuilt.keys()
    assert all(torch.equal(trained[k], rebuilt[k]) for k in trained)
    student = load_checkpoint(runs["maskalign"])["method"]
    assert torch.equal(method.state_dict()["student.blocks.0.attn.qkv.weight"], student["student.blocks.0.attn.qkv.weight"])


def bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir()
    truncated = folder / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    junk = folder / "junk.pt"
    junk.write_text("not a checkpoint")
    state = load_checkpoint(good)
    unknown = folder / "unknown.pt"
    torch.save({**state, "method_name": "nosuch", "config": {**state["config"], "method_name": "nosuch"}}, unknown)
    moved = folder / "moved_teacher.pt"
    config = json.loads(json.dumps(state["config"]))
    config["method"]["teacher_weights"] = str(folder / "gone.safetensors")
    torch.save({**state, "config": config}, moved)
    return {"truncated": truncated, "junk": junk, "unknown": unknown, "moved": moved}


@pytest.mark.parametrize("case, words", [
    ("truncated", "could not be read (truncated or not a checkpoint)"),
    ("junk", "could not be read (truncated or not a checkpoint)"),
    ("missing", "does not exist"),
    ("unknown", "unknown method_name 'nosuch'"),
    ("moved", "gone.safetensors' does not exist; pass --teacher-weights FILE"),
    ("teacher flag", "teacher weights file '/nonexistent/clip.pt' does not exist"),
    ("no images", "--images: no images"),
    ("unreadable images", "none of its 1 images could be read"),
    ("no such images", "--images: data path"),
    ("n", "--n must be at least 1"),
    ("extension", "picture.jpg': the file name must end in .png"),
    ("mae teacher", "--teacher-weights: method 'mae' has no teacher"),
])
def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, runs, folder, capsys, case, words):
    bad = bad_checkpoints(tmp_path / "bad", runs["maskalign"])
    empty, unreadable = tmp_path / "empty", tmp_path / "unreadable"
    empty.mkdir()
    unreadable.mkdir()
    (unreadable / "x.png").write_bytes(b"garbage")
    model, images, extra = str(runs["maskalign"]), str(folder), []
    if case in bad:
        model = str(bad[case])
    elif case == "missing":
        model = str(tmp_path / "nosuch.pt")
    elif case == "teacher flag":
        extra = ["--teacher-weights", "/nonexistent/clip.pt"]
    elif case == "mae teacher":
        model, extra = str(runs["mae"]), ["--teacher-weights", "x.pt"]
    elif case == "no images":
        images = str(empty)
    elif case == "unreadable images":
        images = str(unreadable)
    elif case == "no such images":
        images = str(tmp_path / "nowhere")
    elif case == "n":
        extra = ["--n", "0"]
    out = tmp_path / "out" / ("picture.jpg" if case == "extension" else "picture.png")
    with pytest.raises(SystemExit) as error:
        main([model, "--images", images, "--out", str(out), "--out-json", str(tmp_path / "out" / "p.json"), *extra])
    err = capsys.readouterr().err
    assert error.value.code == 2
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_checkpoint_of_a_method_without_pictures_is_refused(tmp_path, runs, folder, capsys, monkeypatch):
    from fastmim.methods.mae import MAE
    from fastmim.methods.base import Method

    monkeypatch.setattr(MAE, "picture", Method.picture)  # as a method without the hook (fine-tuning's)
    with pytest.raises(SystemExit) as error:
        main([str(runs["mae"]), "--images", str(folder), "--out", str(tmp_path / "p.png")])
    assert error.value.code == 2 and "mae draws no pictures" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_help_explains_every_flag():
    text = build_parser().format_help()
    for flag in ("MODEL", "--images", "--n", "--seed", "--out", "--out-json", "--teacher-weights", "--device"):
        assert flag in text, flag
    with pytest.raises(SystemExit) as error:
        build_parser().parse_args(["x.pt", "--image", "y"])  # no prefixes of flags
    assert error.value.code == 2


def test_the_picture_reads_back_as_the_images(tmp_path, runs, folder):
    """The input panel holds the image as the evaluation transform makes it, pixel for pixel."""
    from fastmim.eval.features import eval_transform
    from fastmim.pictures import to_pixels

    assert main([str(runs["mae"]), "--images", str(folder / "picture_2.png"), "--out", str(tmp_path / "p.png"),
                 "--out-json", str(tmp_path / "p.json")]) == 0
    info = json.loads((tmp_path / "p.json").read_text())
    cfg = read_config(load_checkpoint(runs["mae"]))
    image = cfg.data.image
    x = eval_transform(image.size, image.mean, image.std)(Image.open(folder / "picture_2.png").convert("RGB"))
    x0, y0, x1, y1 = info["images"][0]["panels"]["input"]
    png = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))[y0:y1, x0:x1]
    assert np.array_equal(png, to_pixels(x[None], image)[0].repeat(info["scale"], 0).repeat(info["scale"], 1))
