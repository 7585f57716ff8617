"""What a new user met, each through the command line in a subprocess: the exit code, the one message and what
the output folder holds afterwards. Run provenance (a run's config.yaml never clears or restarts it), a named
teacher is that teacher, the start-up lines say what runs, values are checked whole, errors are lines not
tracebacks, and what to do next is said correctly."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--batch-size", "8", "--set", "data.synthetic_images=64", "--set", "data.workers=0",
        "--set", "train.log_every=1"]
OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}


def run(module: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def pretrain(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run("fastmim.pretrain", *args, **kwargs)


def one_error_line(result: subprocess.CompletedProcess, code: int, prog: str, *words: str) -> None:
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if f"{prog}: error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for word in words:
        assert word in errors[0], (word, errors[0])


def steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A small folder of real image files (two classes)."""
    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (root / label).mkdir()
        for i in range(12):
            pixels = (torch.rand(72, 72, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


# --- 1: run provenance ------------------------------------------------------------------------------------------

def test_a_runs_config_yaml_continues_that_run_and_never_removes_it(tmp_path):
    out = tmp_path / "demo"
    first = pretrain(*FAST, "--output", str(out), "--max-steps", "3", "--resume", "never",
                     "--set", "train.overwrite=true")  # how `make demo` starts
    assert first.returncode == 0, first.stderr[-3000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert "resume" not in saved["train"] and "overwrite" not in saved["train"]
    again = pretrain("--config", str(out / "config.yaml"), "--max-steps", "5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and steps(out) == [1, 2, 3, 4, 5]


def test_an_old_config_yaml_that_carries_resume_never_and_overwrite_does_not_clear_the_run(tmp_path):
    out = tmp_path / "run"
    assert pretrain(*FAST, "--output", str(out), "--max-steps", "2").returncode == 0
    old = yaml.safe_load((out / "config.yaml").read_text())
    old["train"].update(resume="never", overwrite=True)  # what an older fastmim wrote
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    again = pretrain("--config", str(tmp_path / "old.yaml"), "--max-steps", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "cleared" not in again.stdout and steps(out) == [1, 2, 3]


def test_clearing_a_run_says_what_was_removed(tmp_path):
    out = tmp_path / "run"
    assert pretrain(*FAST, "--output", str(out), "--max-steps", "2").returncode == 0
    cleared = pretrain(*FAST, "--output", str(out), "--max-steps", "1", "--resume", "never",
                       "--set", "train.overwrite=true")
    assert cleared.returncode == 0, cleared.stderr[-3000:]
    assert f"cleared the run in {out} (it had reached step 2): removed config.yaml, metrics.jsonl" in cleared.stdout


def test_the_start_names_the_teacher_its_weights_the_data_backend_and_the_threads(tmp_path, images):
    result = pretrain("--data", str(images), "--data-backend", "torchvision", "--output", str(tmp_path / "run"),
                      "--max-steps", "1", "--batch-size", "8", "--set", "data.workers=64")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher: vit_tiny_patch16_224 (depth=4), RANDOM weights" in result.stdout
    assert "warning: the teacher vit_tiny_patch16_224 has RANDOM weights" in result.stdout
    assert "data: torchvision, 24 images" in result.stdout
    assert "threads:" in result.stdout and "data.workers=64 lowered to the" in result.stdout
    assert "worker processes in total" not in result.stderr  # PyTorch's own warning about too many workers
    synthetic = pretrain(*FAST, "--output", str(tmp_path / "demo"), "--max-steps", "1")
    assert "RANDOM weights" in synthetic.stdout and "warning:" not in synthetic.stdout  # the demo: no warning


# --- 2: naming a teacher means that teacher ---------------------------------------------------------------------

def test_naming_a_teacher_offline_without_weights_is_the_offline_error_not_a_random_teacher(tmp_path):
    result = pretrain("--teacher", "clip_b16", "--output", str(tmp_path / "run"), "--max-steps", "1",
                      env={**OFFLINE, "HF_HOME": str(tmp_path / "empty_cache")}, timeout=300)
    one_error_line(result, 2, "python -m fastmim.pretrain", "could not get timm's pretrained weights",
                   "--teacher-weights FILE")
    assert not (tmp_path / "run").exists()


def test_a_named_teacher_drops_the_recipes_settings_for_its_own_teacher():
    config = yaml.safe_load(pretrain("--teacher", "dino_b16", "--print-config").stdout)
    assert config["method"]["teacher_weights"] == "hub" and config["method"]["teacher_kwargs"] == {}
    asked = yaml.safe_load(pretrain("--teacher", "dino_b16", "--teacher-weights", "random", "--print-config").stdout)
    assert asked["method"]["teacher_weights"] == "random"


# --- 3: values checked whole ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--set", "data.img_size=60"], ("data.img_size 60 is not a multiple of method.patch_size 16",)),
    (["--recipe", "demo_mrmae", "--set", "method.mimic_weights=[1, x]"], ("method.mimic_weights must be",)),
    (["--set", "data.std=[0.2, 0.2, 0.2, 0.2]"], ("data.std must be 3 numbers",)),
    (["--batch-size", "64", "--set", "data.synthetic_images=32"], ("less than one step's images",)),
])
def test_values_are_checked_whole_before_anything_is_written(tmp_path, args, words):
    result = pretrain(*args, "--output", str(tmp_path / "run"))
    one_error_line(result, 2, "python -m fastmim.pretrain", *words)
    assert not (tmp_path / "run").exists()


def test_a_prefix_of_a_flag_is_not_the_flag(tmp_path):
    result = pretrain("--max-step", "3", "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "unrecognized arguments: --max-step" in result.stderr
    assert not (tmp_path / "run").exists()


# --- 4: errors, not tracebacks ------------------------------------------------------------------------------------

def test_too_many_non_finite_steps_is_one_error_line(tmp_path):
    result = pretrain(*FAST, "--output", str(tmp_path / "run"), "--max-steps", "20", "--set", "optim.base_lr=1e30",
                      "--set", "optim.warmup_epochs=0", "--set", "train.max_nonfinite=2")
    one_error_line(result, 1, "python -m fastmim.pretrain", "not finite for 2 steps in a row")


def test_ctrl_c_before_the_first_step_is_one_line_and_writes_nothing(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "fastmim.pretrain", "--output", str(tmp_path / "run")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    time.sleep(1.0)  # importing torch and building take longer: the run has not started
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    one_error_line(result, 130, "python -m fastmim.pretrain", "interrupted")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    result = pretrain(*FAST, "--output", str(out), "--set", "train.checkpoint_every=4", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("name, words", [("folder", "is a folder"), ("student.pt", "FILE.safetensors")])
def test_export_to_a_folder_or_another_extension_is_one_line_and_leaves_nothing(tmp_path, trained, name, words):
    target = tmp_path / name
    if name == "folder":
        target.mkdir()
    result = run("fastmim.export", str(trained / "checkpoints" / "last.pt"), "--out", str(target))
    one_error_line(result, 2, "python -m fastmim.export", words)
    assert [p.name for p in tmp_path.iterdir()] == ([name] if name == "folder" else [])
    assert not list(target.iterdir()) if name == "folder" else not target.exists()


# --- 5: what to do next, said correctly -------------------------------------------------------------------------

def copy_run(trained: Path, folder: Path) -> Path:
    shutil.copytree(trained, folder)
    return folder


def test_a_truncated_last_checkpoint_names_the_newest_readable_one(tmp_path, trained):
    out = copy_run(trained, tmp_path / "run")
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = pretrain(*FAST, "--output", str(out), "--epochs", "1")
    one_error_line(result, 2, "python -m fastmim.pretrain", "could not be read",
                   f"the newest readable checkpoint beside it is '{out / 'checkpoints' / 'step_00000008.pt'}'")


def test_a_finished_run_says_how_to_train_longer_and_both_ways_work(tmp_path, trained):
    trained = copy_run(trained, tmp_path / "run")
    done = pretrain(*FAST, "--output", str(trained), "--epochs", "1")
    assert done.returncode == 0 and "is complete at step 8 of 8" in done.stdout, done.stdout + done.stderr
    assert "--epochs N" in done.stdout and f"--init {trained / 'checkpoints' / 'last.pt'}" in done.stdout
    new = pretrain(*FAST, "--output", str(tmp_path / "new"), "--max-steps", "2", "--init",
                   str(trained / "checkpoints" / "last.pt"))
    assert new.returncode == 0, new.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())["train"]["init"].endswith("last.pt")
    longer = pretrain(*FAST, "--output", str(trained), "--epochs", "2", "--max-steps", "10")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "changed since the saved run: train.epochs: 1 → 2" in longer.stdout and steps(trained)[-1] == 10


def test_the_other_methods_run_error_offers_the_option_that_works(tmp_path, trained):
    result = pretrain(*FAST, "--recipe", "demo_mae", "--output", str(trained))
    one_error_line(result, 2, "python -m fastmim.pretrain", "was written by a maskalign run",
                   "--resume never --set train.overwrite=true")


def test_an_export_with_its_head_prints_a_timm_call_that_works_verbatim(tmp_path, trained):
    out = tmp_path / "student.safetensors"
    result = run("fastmim.export", str(trained / "checkpoints" / "last.pt"), "--out", str(out),
                 "--head-classes", "7")
    assert result.returncode == 0, result.stderr
    call = result.stdout.strip().split("load it with ")[1]
    assert "num_classes=7" in call
    import timm

    model = eval(call, {"timm": timm})
    assert model.head.out_features == 7
    mode = stat.S_IMODE((trained / "checkpoints" / "last.pt").stat().st_mode)
    assert stat.S_IMODE(out.stat().st_mode) == mode  # the same permissions as the checkpoints


def test_evaluate_offline_with_hub_weights_names_its_own_flag(tmp_path, images):
    result = run("fastmim.evaluate", "knn", "vit_tiny_patch16_224", "--weights", "hub", "--train", str(images),
                 "--val", str(images), env={**OFFLINE, "HF_HOME": str(tmp_path / "empty_cache")}, timeout=300)
    one_error_line(result, 2, "python -m fastmim.evaluate", "--weights FILE")
    assert "--teacher-weights" not in result.stderr


# --- 6: defaults that do not mislead ------------------------------------------------------------------------------

def test_evaluate_reads_the_feature_the_method_trains_and_says_so(tmp_path, images):
    out = tmp_path / "run"
    assert pretrain(*FAST, "--recipe", "demo_maskdistill", "--output", str(out), "--max-steps", "1").returncode == 0
    result = run("fastmim.evaluate", "knn", str(out / "checkpoints" / "last.pt"), "--train", str(images),
                 "--val", str(images), "--workers", "0", "--out", str(tmp_path / "knn.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "features: the mean of the patch tokens (what maskdistill trains" in result.stdout
    assert json.loads((tmp_path / "knn.json").read_text())["pooling"] == "mean"


def test_evaluate_checks_the_class_folders_before_loading_anything(tmp_path, images):
    val = tmp_path / "val"
    (val / "c").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(val / "c" / "x.png")
    result = run("fastmim.evaluate", "knn", "vit_tiny_patch16_224", "--weights", "hub", "--train", str(images),
                 "--val", str(val), env=OFFLINE)  # the class check comes first: no hub is asked
    one_error_line(result, 2, "python -m fastmim.evaluate", "classes the training set lacks: c")


def test_the_linear_probe_warns_when_its_batch_is_the_whole_set(tmp_path, trained, images):
    result = run("fastmim.evaluate", "linear", str(trained / "checkpoints" / "last.pt"), "--train", str(images),
                 "--val", str(images), "--workers", "0", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: --probe-batch 16384 is more than the 24 training images" in result.stdout


def test_list_recipes_lines_are_whole():
    result = pretrain("--list-recipes")
    assert result.returncode == 0
    for line in result.stdout.splitlines():
        assert line.rstrip().endswith((".", ")")), line
