import subprocess
import sys

import pytest
import yaml

from fastmim.pretrain import build_parser, main
from tests.train.helpers import metrics, summary


def test_demo_loss_falls(tmp_path):
    """The demo recipe as `make demo` runs it: the mean loss of the last tenth of logged steps is at most 0.7×
    that of the first tenth."""
    main(["--output", str(tmp_path)])
    logged = [m["loss"] for m in metrics(tmp_path)]
    tenth = max(1, len(logged) // 10)
    first, last = sum(logged[:tenth]) / tenth, sum(logged[-tenth:]) / tenth
    assert last <= 0.7 * first, (first, last)
    done = summary(tmp_path)
    assert {"steps", "images", "seconds", "images_per_sec", "final_loss"} <= done.keys()
    assert done["final_loss"] == logged[-1]
    for name in ("config.yaml", "loss_curve.png", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    pictures = sorted(p.name for p in (tmp_path / "pictures").iterdir())  # every 50 steps and at the end
    assert pictures == [f"step_{step:06d}.png" for step in (50, 100, 150, 200, 250, 256)]
    assert [m["step"] for m in metrics(tmp_path)] == [*range(5, 256, 5), 256]  # no logging step added
    assert {"step", "epoch", "loss", "lr", "images_per_sec"} <= metrics(tmp_path)[0].keys()


def test_help_explains_every_flag():
    text = build_parser().format_help()
    for flag in ("--recipe", "--data", "--output", "--max-steps", "--epochs", "--batch-size", "--resume",
                 "--kernels", "--data-backend", "--teacher", "--teacher-weights", "--device", "--set",
                 "--print-config", "--compile", "--list-recipes"):
        assert flag in text, flag
    assert text.count("help") >= 1


def test_print_config_applies_flags_and_set():
    out = subprocess.run([sys.executable, "-m", "fastmim.pretrain", "--recipe", "maskalign_vit_base_clip_b16",
                          "--batch-size", "64", "--set", "method.mask_ratio=0.75", "--set", "optim.betas=[0.9, 0.99]",
                          "--print-config"], capture_output=True, text=True, check=True).stdout
    assert "mask_ratio: 0.75" in out and "batch_size: 64" in out and "teacher: clip_b16" in out
    assert "- 0.99" in out


def test_list_recipes_names_each_with_its_method(capsys):
    assert main(["--list-recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines}
    assert rows["maskalign_vit_base_clip_b16"] == "maskalign" and rows["demo"] == "maskalign"
    assert rows["mae_vit_base"] == rows["mae_vit_large"] == rows["demo_mae"] == "mae"
    assert rows["mrmae_vit_base_clip_b16"] == rows["mrmae_vit_base_clip_dino_b16"] == rows["demo_mrmae"] == "mrmae"
    assert all(len(line.split()) > 3 for line in lines)  # and a description


def test_print_config_records_the_method_and_its_fields(capsys):
    main(["--recipe", "mrmae_vit_base_clip_dino_b16", "--teacher-weights", "a.pth,b.pth", "--print-config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["method_name"] == "mrmae" and cfg["method"]["teachers"] == ["clip_b16", "dino_b16"]
    assert cfg["method"]["teacher_weights"] == ["a.pth", "b.pth"] and cfg["method"]["mask_ratio"] == 0.75
    main(["--recipe", "mae_vit_base", "--print-config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["method_name"] == "mae" and cfg["method"]["norm_pix"] is True and cfg["optim"]["accum_steps"] == 4
    assert cfg["optim"]["min_lr"] == 0.0 and cfg["optim"]["warmup_epochs"] == 40 and cfg["train"]["epochs"] == 1600


def test_method_fields_are_checked_against_the_recipes_method(capsys):
    for argv, message in ((["--recipe", "demo_mae", "--teacher", "clip_b16"], "method 'mae' has no teacher"),
                          (["--recipe", "demo_mae", "--set", "method.fusion=sum"], "unknown field 'fusion'")):
        with pytest.raises(SystemExit) as error:
            main([*argv, "--print-config"])
        assert error.value.code == 2 and message in capsys.readouterr().err


def test_bad_set_is_a_clear_error(capsys):
    for bad, message in ((["--set", "method.mask_ratioo=0.5"], "unknown field 'mask_ratioo'"),
                         (["--set", "nosection.x=1"], "unknown field 'nosection' in the configuration"),
                         (["--set", "novalue"], "expects key=value")):
        try:
            main([*bad, "--print-config"])
        except SystemExit as error:
            assert error.code == 2
        assert message in capsys.readouterr().err
