"""Pictures during pretraining (train.picture_every): drawn at their steps into DIR/pictures and TensorBoard, on a
fixed set of training images; the training is the same as without them, and a resumed run draws the
uninterrupted run's pictures; a method without pictures draws none."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from fastmim.checkpoint import load_checkpoint
from fastmim.config import Config, check_config
from fastmim.config_values import ConfigValueError
from fastmim.data_config import DataConfig
from fastmim.pretrain import main
from fastmim.train.pictures import PictureEvaluator, training_images
from fastmim.train.run_folder import clear_run

from ..methods import toy_method  # noqa: F401  (registers demo_toy: a method without pictures)
from .helpers import metrics

DEMOS = {"maskalign": "demo", "mae": "demo_mae", "mrmae": "demo_mrmae", "maskdistill": "demo_maskdistill"}
TIMING = {"images_per_sec", "data_wait", "mfu", "picture", "picture_seconds"}


def run(output: Path, recipe: str, steps: int, every: int, *extra: str) -> int:
    return main(["--recipe", recipe, "--output", str(output), "--max-steps", str(steps), "--batch-size", "8",
                 "--set", "data.synthetic_images=128", "--set", "data.workers=0", "--set", "train.log_every=1",
                 "--set", f"train.picture_every={every}", "--set", "train.picture_images=3", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEMOS))
def test_pictures_leave_the_training_alone_and_a_resume_draws_the_same_ones(tmp_path, name, capsys):
    recipe = DEMOS[name]
    assert run(tmp_path / "whole", recipe, 6, 3) == 0
    assert "picture at step 3:" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "whole" / "pictures").iterdir()) == ["step_000003.png",
                                                                                     "step_000006.png"]
    assert run(tmp_path / "plain", recipe, 6, 0) == 0
    assert not (tmp_path / "plain" / "pictures").exists()
    whole, plain = metrics(tmp_path / "whole"), metrics(tmp_path / "plain")
    assert [r["step"] for r in whole] == [r["step"] for r in plain] == list(range(1, 7))
    for a, b in zip(whole, plain):  # every loss and term of every step, exactly
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert [r.get("picture") for r in whole] == [None, None, "pictures/step_000003.png", None, None,
                                                 "pictures/step_000006.png"]
    assert all(r["picture_seconds"] > 0 for r in whole if "picture" in r)
    trained = [load_checkpoint(tmp_path / folder / "checkpoints" / "last.pt")["method"] for folder in ("whole", "plain")]
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[0])

    assert run(tmp_path / "parts", recipe, 3, 3) == 0
    assert run(tmp_path / "parts", recipe, 6, 3) == 0
    for step in ("step_000003.png", "step_000006.png"):
        assert (tmp_path / "parts" / "pictures" / step).read_bytes() == (
            tmp_path / "whole" / "pictures" / step).read_bytes(), step


def test_pictures_at_their_steps_and_at_the_end_of_the_schedule(tmp_path):
    """picture_every steps and the schedule's last step (128 images / 8 = 16 steps an epoch, one epoch); steps
    that draw a picture are logging steps."""
    assert run(tmp_path / "run", "demo", 16, 5, "--epochs", "1", "--set", "train.log_every=4") == 0
    drawn = sorted(p.name for p in (tmp_path / "run" / "pictures").iterdir())
    assert drawn == ["step_000005.png", "step_000010.png", "step_000015.png", "step_000016.png"]
    assert [r["step"] for r in metrics(tmp_path / "run")] == [4, 5, 8, 10, 12, 15, 16]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["picture"] == "pictures/step_000016.png" and "picture_seconds" not in summary
    print(clear_run(tmp_path / "run"))
    assert not (tmp_path / "run" / "pictures").exists()  # clearing a run removes its pictures


def test_a_method_without_pictures_draws_none(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(tmp_path / "toy", "demo_toy", 2, 1) == 0
    assert any("toy draws no pictures" in str(w.message) for w in caught)
    assert not (tmp_path / "toy" / "pictures").exists()
    assert all("picture" not in r for r in metrics(tmp_path / "toy"))


def test_only_rank_zero_draws(tmp_path):
    from fastmim.recipes import recipe

    cfg = recipe("demo")
    evaluator = PictureEvaluator(cfg, None, tmp_path, 100, torch.device("cpu"), None, is_main=False)
    assert evaluator.evaluate(50) == {} and not list(tmp_path.iterdir())
    assert evaluator.due(50) and evaluator.due(100) and not evaluator.due(49)


def test_the_pictured_images_are_a_fixed_draw_that_skips_unreadable_files(tmp_path):
    from fastmim.data.synthetic import SyntheticImages

    synthetic = DataConfig(backend="synthetic", img_size=64, synthetic_images=50)
    first, names = training_images(synthetic, 3)
    again, same = training_images(synthetic, 4)
    assert first.shape == (3, 3, 64, 64) and names == same[:3] and torch.equal(first, again[:3])
    assert names != ["synthetic image 0", "synthetic image 1", "synthetic image 2"]  # a draw, not the first ones
    source = SyntheticImages(6, seed=1, size=70)
    for i in range(6):
        source.load(i).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"broken")
    files = DataConfig(path=str(tmp_path), backend="torchvision", img_size=64)
    with pytest.warns(UserWarning, match="cannot read .*3.png"):
        images, names = training_images(files, 6)
    assert len(names) == 5 and not any(n.endswith("3.png") for n in names)


def test_the_picture_reaches_tensorboard(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from fastmim.train.metrics import MetricsWriter

    added = []

    class Recorder:  # stands in for torch's SummaryWriter (the tensorboard package is optional)
        def add_scalar(self, key, value, step):
            added.append((key, step))

        def add_image(self, tag, image, step, dataformats):
            added.append((tag, step, image.shape, dataformats))

        def close(self):
            pass

    monkeypatch.setattr(MetricsWriter, "_tensorboard", staticmethod(lambda folder: Recorder()))
    (tmp_path / "pictures").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "pictures" / "step_000008.png")
    writer = MetricsWriter(tmp_path, 0, tensorboard=True)
    writer.write({"step": 8, "loss": 1.5, "picture": "pictures/step_000008.png", "picture_seconds": 0.5})
    writer.close()
    assert ("picture", 8, (20, 30, 3), "HWC") in added and ("picture_seconds", 8) in added


@pytest.mark.parametrize("field, value", [("picture_every", -1), ("picture_images", 0)])
def test_picture_settings_are_checked(field, value):
    cfg = Config()
    setattr(cfg.train, field, value)
    with pytest.raises(ConfigValueError, match=f"train.{field} must be at least"):
        check_config(cfg)


def test_picture_settings_may_change_on_resume():
    from fastmim.train.resume_check import compare

    saved = {"train": {"picture_every": 0, "picture_images": 4}}
    refused, accepted = compare(saved, {"train": {"picture_every": 100, "picture_images": 8}})
    assert not refused and len(accepted) == 2
