import numpy as np
import pytest
from PIL import Image

from tests.train.helpers import pretrain, summary


def write_images(folder, count, size=80):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img_{i:03d}.jpg")


def test_corrupt_jpeg_does_not_stop_training(tmp_path):
    write_images(tmp_path / "data" / "class_a", 23)
    (tmp_path / "data" / "class_a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        pretrain(tmp_path / "run", "--data", str(tmp_path / "data"), "--data-backend", "torchvision",
                 "--epochs", "1")
    done = summary(tmp_path / "run")
    assert done["steps"] == 3 and done["skipped_images"] == 1


def test_wrong_data_path_fails_at_once_naming_it(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SystemExit) as error:
        pretrain(tmp_path / "run", "--data", str(missing))
    assert error.value.code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_non_finite_losses_in_a_row_abort_with_a_message(tmp_path, monkeypatch, capsys):
    from fastmim.methods.maskalign import MaskAlign

    original = MaskAlign.forward

    def poisoned(self, images):
        out = original(self, images)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskAlign, "forward", poisoned)
    with pytest.raises(SystemExit) as stop:  # the run failed: one error line, exit 1
        pretrain(tmp_path / "run", "--max-steps", "10", "--set", "train.max_nonfinite=3")
    assert stop.value.code == 1 and "not finite for 3 steps in a row" in capsys.readouterr().err
