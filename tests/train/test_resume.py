import pytest

from tests.train.helpers import metrics, pretrain


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_run_reproduces_the_uninterrupted_losses(tmp_path, workers):
    """40 steps in one go against 20 steps then --resume auto to 40 (16 steps per epoch: the resume falls
    mid-epoch and the continuation crosses two epoch boundaries)."""
    extra = ["--set", f"data.workers={workers}"]
    pretrain(tmp_path / "straight", "--max-steps", "40", *extra)
    pretrain(tmp_path / "split", "--max-steps", "20", *extra)
    pretrain(tmp_path / "split", "--max-steps", "40", "--resume", "auto", *extra)
    straight, split = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [m["step"] for m in split] == list(range(1, 41))
    for a, b in zip(straight[20:], split[20:]):
        assert a["step"] == b["step"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)


def test_resume_from_an_explicit_checkpoint_and_nothing_left_to_do(tmp_path):
    pretrain(tmp_path / "a", "--max-steps", "5", "--set", "train.keep_checkpoints=3")
    checkpoint = tmp_path / "a" / "checkpoints" / "step_00000005.pt"
    assert checkpoint.is_file()
    pretrain(tmp_path / "b", "--max-steps", "8", "--resume", str(checkpoint))
    assert [m["step"] for m in metrics(tmp_path / "b")] == [6, 7, 8]
    pretrain(tmp_path / "b", "--max-steps", "8")  # already there: nothing to do, nothing broken
    assert [m["step"] for m in metrics(tmp_path / "b")] == [6, 7, 8]


def test_resume_from_a_missing_checkpoint_fails_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        pretrain(tmp_path / "c", "--resume", str(tmp_path / "nope.pt"))
    assert error.value.code == 2
    assert "nope.pt" in capsys.readouterr().err
