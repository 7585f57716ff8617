import pytest
import torch

from fastmim import checkpoint as ckpt


def test_interrupted_write_leaves_the_previous_last_loadable(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    ckpt.save_checkpoint({"method": {}, "step": 1, "w": torch.ones(3)}, folder, step=1, keep=2)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"method": {}, "step": 2, "w": torch.zeros(3)}, folder, step=2, keep=2)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(folder / "last.pt")
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step_00000001.pt"]  # no temporary left


def test_keeps_the_newest_step_files(tmp_path):
    for step in range(1, 5):
        ckpt.save_checkpoint({"method": {}, "step": step}, tmp_path, step=step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_00000003.pt", "step_00000004.pt"]
    assert ckpt.load_checkpoint(tmp_path / "last.pt")["step"] == 4


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume("auto", tmp_path) is None
    assert ckpt.resolve_resume("never", tmp_path) is None
    ckpt.save_checkpoint({"step": 1}, tmp_path, step=1, keep=0)
    assert ckpt.resolve_resume("auto", tmp_path) == tmp_path / "last.pt"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.resolve_resume(str(tmp_path / "missing.pt"), tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        ckpt.load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "other.pt")  # a torch file, not a fastmim checkpoint
    with pytest.raises(ckpt.CheckpointError, match="other.pt' is not a fastmim checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")
