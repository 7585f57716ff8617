import subprocess
import sys

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
    assert {"step", "epoch", "loss", "lr", "images_per_sec"} <= metrics(tmp_path)[0].keys()


def test_help_explains_every_flag():
    text = build_parser().format_help()
    for flag in ("--recipe", "--data", "--output", "--max-steps", "--epochs", "--batch-size", "--resume",
                 "--kernels", "--data-backend", "--teacher", "--teacher-weights", "--device", "--set",
                 "--print-config", "--compile"):
        assert flag in text, flag
    assert text.count("help") >= 1


def test_print_config_applies_flags_and_set():
    out = subprocess.run([sys.executable, "-m", "fastmim.pretrain", "--recipe", "maskalign_vit_base_clip_b16",
                          "--batch-size", "64", "--set", "method.mask_ratio=0.75", "--set", "optim.betas=[0.9, 0.99]",
                          "--print-config"], capture_output=True, text=True, check=True).stdout
    assert "mask_ratio: 0.75" in out and "batch_size: 64" in out and "teacher: clip_b16" in out
    assert "- 0.99" in out


def test_bad_set_is_a_clear_error(capsys):
    for bad, message in ((["--set", "method.mask_ratioo=0.5"], "unknown field 'mask_ratioo'"),
                         (["--set", "nosection.x=1"], "no config section 'nosection'"),
                         (["--set", "novalue"], "expects key=value")):
        try:
            main([*bad, "--print-config"])
        except SystemExit as error:
            assert error.code == 2
        assert message in capsys.readouterr().err
