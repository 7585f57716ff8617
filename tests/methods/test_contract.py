"""The contract every registered method keeps, swept over the registry — so a new method is covered by adding
its file, its configuration and its recipe, with no list to edit here. `toy_method` is such a method, defined
in the tests only: that this sweep runs it is the proof.

Per method, from its demo recipe (a recipe named `demo…` whose configuration is the method's): a short CPU run
whose loss is finite and falls, a resume that reproduces the uninterrupted run, an export that timm loads
strictly, and flops_per_image equal to torch's FLOP counter on the same step."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch

from fastmim.checkpoint import load_checkpoint, read_config
from fastmim.export import export
from fastmim.methods.configs import method_name
from fastmim.methods.registry import METHODS, build_method
from fastmim.finetune import main as finetune
from fastmim.pretrain import main as pretrain
from fastmim.recipes import RECIPES, recipe

from . import toy_method  # noqa: F401  (registers the test-only method and its recipe)
from .flop_count import counted

COMMANDS = {"pretrain": pretrain, "finetune": finetune}
# 16 images seen again and again: every objective's loss falls within a few steps (memorizing, as a check)
FAST = ["--batch-size", "8", "--set", "data.synthetic_images=16", "--set", "data.synthetic_val_images=16",
        "--set", "data.workers=0", "--epochs", "12",  # 24 steps of 2
        "--set", "train.log_every=1", "--set", "optim.warmup_epochs=0.25", "--set", "train.checkpoint_every=1000"]


def demo_recipes() -> dict[str, str]:
    """Each method's demo recipe, found by the method its configuration names."""
    found = {}
    for name in RECIPES:
        if name.startswith("demo"):
            found.setdefault(method_name(recipe(name).method), name)
    return found


def run(output: Path, method: str, steps: int) -> list[dict]:
    """The method's demo through its command (pretraining or fine-tuning)."""
    name = demo_recipes()[method]
    command = COMMANDS[recipe(name).method.task]
    assert command(["--recipe", name, "--output", str(output), "--max-steps", str(steps), *FAST]) == 0
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_the_registry_holds_the_builtin_methods_and_the_test_one():
    assert {"maskalign", "mae", "mrmae", "maskdistill", "finetune", "toy"} <= set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_has_a_demo_recipe(method):
    assert method in demo_recipes(), f"method {method!r} has no demo recipe (a recipe named demo… for it)"


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_trains_resumes_exactly_and_exports_to_timm(tmp_path, method, capsys):
    straight = run(tmp_path / "straight", method, 24)
    losses = [m["loss"] for m in straight]
    assert all(isinstance(loss, float) for loss in losses), losses  # finite: null in JSON otherwise
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    assert all(m["grad_norm"] > 0 for m in straight)

    run(tmp_path / "split", method, 12)
    split = run(tmp_path / "split", method, 24)
    assert [m["step"] for m in split] == list(range(1, 25))
    for a, b in zip(straight[12:], split[12:]):
        for key in {k for k in a if not k.endswith("_seconds")} - {"images_per_sec", "data_wait", "mfu"}:
            expected = pytest.approx(a[key], rel=1e-6) if isinstance(a[key], float) else a[key]  # or a picture's path
            assert b[key] == expected, (a["step"], key)

    checkpoint = tmp_path / "straight" / "checkpoints" / "last.pt"
    call = export(checkpoint, tmp_path / "student.safetensors")
    model = eval(call, {"timm": timm})  # the printed call, strict: no missing or unexpected key
    trained = load_checkpoint(checkpoint)["method"]
    torch.testing.assert_close(model.blocks[-1].mlp.fc2.weight, trained["student.blocks.3.mlp.fc2.weight"])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_flops_per_image_equals_torchs_count(method):
    cfg = recipe(demo_recipes()[method])
    cfg.method.attn_backend = "math"  # explicit products the counter sees
    torch.manual_seed(0)
    image = dataclasses.replace(cfg.data.image, classes=("a", "b", "c") if cfg.data.labels else ())
    built = build_method(cfg.method, image)
    built.set_attention_backend("math", torch.device("cpu"))  # as prepare() would: SDPA's CPU backward is uncounted
    images = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size)
    forward, backward = counted(built, (images, torch.tensor([0, 2])) if cfg.data.labels else images)
    assert forward + backward == pytest.approx(2 * built.flops_per_image(), rel=1e-9)


def test_the_checkpoint_rebuilds_the_configuration(tmp_path):
    run(tmp_path, "toy", 2)
    assert method_name(read_config(load_checkpoint(tmp_path / "checkpoints" / "last.pt")).method) == "toy"
