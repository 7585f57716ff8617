"""The classifier starts from what --init names — a pretraining checkpoint (e.g. the pretraining demo's), its
export, or a timm name with a weights file — with every block weight the pretrained student's, the head new."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastmim.checkpoint import load_checkpoint, student_weights
from fastmim.export import export
from fastmim.finetune import main as finetune
from fastmim.methods.classifier import build_classifier
from fastmim.methods.configs import FinetuneConfig
from fastmim.pretrain import main as pretrain

QUICK = ["--max-steps", "2", "--set", "data.synthetic_images=16", "--set", "data.batch_size=8",
         "--set", "data.workers=0", "--set", "train.picture_every=0"]


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory) -> Path:
    """Two steps of the pretraining demo (MaskAlign, the 96-wide student at 64 px)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    assert pretrain(["--recipe", "demo", "--output", str(out), *QUICK]) == 0
    return out / "checkpoints" / "last.pt"


def assert_student_loaded(model: torch.nn.Module, student: dict) -> None:
    state = model.state_dict()
    loaded = [k for k in student if k in state and not k.startswith(("head.", "norm."))]
    assert len(loaded) > 20 and "blocks.3.mlp.fc2.weight" in loaded
    for key in loaded:
        torch.testing.assert_close(state[key], student[key], rtol=0, atol=0, msg=key)
    assert model.head.weight.abs().max() < 1e-3 and model.head.out_features == 3  # MAE's new head


def test_from_a_pretraining_checkpoint(demo_checkpoint):
    student = student_weights(load_checkpoint(demo_checkpoint), pretraining_only=False)
    model, source, (name, kwargs) = build_classifier(FinetuneConfig(init=str(demo_checkpoint)), 64, 3)
    assert_student_loaded(model, student)
    assert "step 2" in source and name == "vit_tiny_patch16_224" and kwargs["embed_dim"] == 96


def test_from_an_export(demo_checkpoint, tmp_path):
    student = student_weights(load_checkpoint(demo_checkpoint), pretraining_only=False)
    export(demo_checkpoint, tmp_path / "student.safetensors")
    model, _, _ = build_classifier(FinetuneConfig(init=str(tmp_path / "student.safetensors")), 64, 3)
    assert_student_loaded(model, student)


def test_the_demo_fine_tunes_the_pretraining_demos_student(demo_checkpoint, tmp_path):
    """`python -m fastmim.finetune --init <the pretraining demo's last.pt>` runs and starts from its weights."""
    out = tmp_path / "run"
    assert finetune(["--init", str(demo_checkpoint), "--output", str(out), "--max-steps", "1", "--set",
                     "data.synthetic_images=16", "--set", "data.synthetic_val_images=8", "--set", "data.workers=0",
                     "--batch-size", "8"]) == 0
    assert "finetune" in (out / "config.yaml").read_text()
    assert str(demo_checkpoint) in (out / "config.yaml").read_text()


def test_a_timm_name_with_a_weights_file(tmp_path):
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    cfg = FinetuneConfig(init="vit_tiny_patch16_224", weights=str(tmp_path / "w.safetensors"))
    model, _, _ = build_classifier(cfg, 64, 3)
    assert_student_loaded(model, source.state_dict())
