import timm
import torch
from safetensors.torch import load_file

from fastmim.export import main as export_main
from fastmim.checkpoint import load_checkpoint
from tests.train.helpers import pretrain


def test_exported_student_loads_into_timm(tmp_path):
    # a standard-size tiny student (timm's vit_tiny_patch16_224 dims) at 64 px, sum fusion onto the 4-level teacher
    pretrain(tmp_path, "--max-steps", "2", "--set", "method.student_kwargs={}", "--set", "method.fusion=sum")
    out = tmp_path / "student.safetensors"
    export_main([str(tmp_path / "checkpoints" / "last.pt"), "--out", str(out)])
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, checkpoint_path=str(out))  # strict load
    trained = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["method"]
    torch.testing.assert_close(model.blocks[11].mlp.fc2.weight, trained["student.blocks.11.mlp.fc2.weight"])

    bare = tmp_path / "bare.safetensors"
    export_main([str(tmp_path / "checkpoints" / "last.pt"), "--out", str(bare), "--head-classes", "0"])
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, pretrained=False)
    result = model.load_state_dict(load_file(str(bare)), strict=False)
    assert set(result.missing_keys) == {"head.weight", "head.bias"} and result.unexpected_keys == []
