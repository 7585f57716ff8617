"""A short pretraining run on a JPEG folder through the DALI backend, on the CPU (DALI's CPU decoder): the
same trainer, the same checkpoints, the corrupt file skipped and counted, and resume continuing exactly."""
import math

import pytest

from tests.train.helpers import metrics, pretrain, summary
from tests.train.test_data_errors import write_images

pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali_run") / "data"
    write_images(root / "class_a", 23)
    (root / "class_a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def dali_run(output, folder, *args):
    return pretrain(output, "--data", str(folder), "--data-backend", "dali", "--device", "cpu",
                    "--set", "data.workers=2", *args)


def test_short_dali_run_completes_on_the_cpu_and_skips_the_corrupt_file(tmp_path, jpeg_folder):
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert dali_run(tmp_path / "run", jpeg_folder, "--epochs", "2") == 0
    done = summary(tmp_path / "run")
    # 24 files, batches of 8: 3 steps per epoch; the broken file is dropped from its batch once per epoch
    assert done["steps"] == 6 and done["skipped_images"] == 2
    losses = [row["loss"] for row in metrics(tmp_path / "run") if "loss" in row]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.filterwarnings("ignore:skipped unreadable image")  # asserted in the test above
def test_dali_run_resumed_mid_epoch_reproduces_the_uninterrupted_losses(tmp_path, jpeg_folder):
    """Step 4 is mid-way through epoch 2: the resume rebuilds that epoch's pipeline from DALI's checkpoint."""
    dali_run(tmp_path / "straight", jpeg_folder, "--max-steps", "6")
    dali_run(tmp_path / "split", jpeg_folder, "--max-steps", "4")
    dali_run(tmp_path / "split", jpeg_folder, "--max-steps", "6", "--resume", "auto")
    straight, split = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [m["step"] for m in split] == list(range(1, 7))
    for a, b in zip(straight[4:], split[4:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert summary(tmp_path / "split")["skipped_images"] == summary(tmp_path / "straight")["skipped_images"]
