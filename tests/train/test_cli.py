"""The command line as a new user meets it, each case through `python -m fastmim.pretrain` in a subprocess:
typed --set and --config, resume that refuses a changed run, zero-length runs refused, --resume never into a
used folder, SIGINT/SIGTERM saving last.pt, clean usage errors before any file is written, a finished run left
alone, the start-up lines, offline hub teachers, and the smaller items (README, make demo, benchmarks' outputs,
dropped images)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m fastmim.pretrain: error:"
FAST = ["--batch-size", "8", "--set", "data.synthetic_images=128", "--set", "data.workers=0",
        "--set", "train.log_every=1"]


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastmim.pretrain", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, one `error:` line (no traceback), naming what is wrong."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().startswith(PROG), result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder: Path) -> dict:
    """Every file of a run folder with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1: typed --set, --config -----------------------------------------------------------------------------------

def printed_config(*args: str) -> dict:
    result = cli(*args, "--print-config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_set_values_take_their_fields_types():
    cfg = printed_config("--set", "optim.base_lr=1e-4", "--set", "method.student_kwargs.depth=6",
                         "--set", "train.compile=yes", "--set", "optim.clip_grad=null", "--set", "data.scale=[0.3, 1]")
    assert cfg["optim"]["base_lr"] == 1e-4 and isinstance(cfg["optim"]["base_lr"], float)
    assert cfg["method"]["student_kwargs"] == {"embed_dim": 96, "depth": 6, "num_heads": 3}
    assert cfg["train"]["compile"] is True and cfg["optim"]["clip_grad"] is None
    assert cfg["data"]["scale"] == [0.3, 1.0]


@pytest.mark.parametrize("assignment, words", [
    ("method.mask_ratio=abc", ("method.mask_ratio must be float", "'abc'")),
    ("train.compile=maybe", ("train.compile must be bool", "'maybe'")),
    ("data.batch_size=null", ("data.batch_size is int and cannot be null",)),
    ("method.depth=6", ("unknown field 'depth' in method", "student_kwargs")),
    ("optim.base_lr.x=1", ("optim.base_lr is a value, not a section",)),
])
def test_bad_set_values_name_the_field_its_type_and_the_value(assignment, words):
    assert_usage_error(cli("--set", assignment, "--print-config"), *words)


@pytest.mark.parametrize("assignment, words", [
    ("method.loss=smoth_l1", ("method.loss must be one of smooth_l1, l2, l1, cosine, got 'smoth_l1'",)),
    ("train.kernels=fast", ("train.kernels must be one of auto, fused, reference",)),
    ("method.level_weights=top", ("method.level_weights must be mean, out, linear_decay, topK or midK",)),
    ("data.mean=[0.5, 0.5]", ("data.mean must be 3 numbers, got [0.5, 0.5]",)),
])
def test_a_bad_choice_names_the_field_and_the_allowed_values_before_any_data_is_read(tmp_path, assignment, words):
    result = cli("--data", str(tmp_path / "no_such_folder"), "--output", str(tmp_path / "run"), "--set", assignment)
    assert_usage_error(result, *words)
    assert "no_such_folder" not in result.stderr and not (tmp_path / "run").exists()


def test_help_and_print_config_list_the_choices():
    help_text = cli("--help").stdout
    assert "method.loss" in help_text and "smooth_l1, l2, l1, cosine" in help_text
    printed = cli("--print-config").stdout
    assert "loss: smooth_l1  # one of: smooth_l1, l2, l1, cosine" in printed
    assert yaml.safe_load(printed)["method"]["loss"] == "smooth_l1"  # the comments keep it YAML


def test_an_old_config_with_the_image_in_the_method_section_loads(tmp_path):
    """Before the image belonged to the data section, config.yaml also had method.img_size, data_mean and
    data_std: equal to the data's they are dropped; different, the file is refused with what to change."""
    old = printed_config("--recipe", "demo")
    old["method"].update(img_size=64, data_mean=[0.485, 0.456, 0.406], data_std=[0.229, 0.224, 0.225])
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = printed_config("--config", str(path))
    assert "img_size" not in cfg["method"] and cfg["data"]["img_size"] == 64
    old["method"]["data_mean"] = [0.5, 0.5, 0.5]
    path.write_text(yaml.safe_dump(old))
    assert_usage_error(cli("--config", str(path), "--print-config"), "method.data_mean", "data.mean",
                       "delete method.data_mean")


def test_config_file_is_the_starting_point_with_flags_over_it(tmp_path):
    written = printed_config("--recipe", "demo_mae", "--set", "optim.base_lr=2e-4")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(written))
    cfg = printed_config("--config", str(path), "--batch-size", "4")
    assert cfg["method_name"] == "mae" and cfg["optim"]["base_lr"] == 2e-4 and cfg["data"]["batch_size"] == 4
    assert_usage_error(cli("--config", str(path), "--recipe", "demo", "--print-config"), "give one")
    assert_usage_error(cli("--config", str(tmp_path / "missing.yaml")), "missing.yaml", "cannot read it")
    path.write_text("optim:\n  base_lr: fast\n")
    assert_usage_error(cli("--config", str(path)), "optim.base_lr must be float")


# --- 2, 7: resume compares the configuration; a finished run is left alone ------------------------------------------

def test_resume_refuses_a_changed_run_accepts_a_longer_one_and_leaves_a_finished_one(tmp_path):
    out = tmp_path / "run"
    first = cli(*FAST, "--max-steps", "6", "--output", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(out)

    changed = cli(*FAST, "--max-steps", "12", "--output", str(out), "--batch-size", "16",
                  "--set", "method.mask_ratio=0.5")
    assert_usage_error(changed, "data.batch_size: 8 → 16", "method.mask_ratio: 0.7 → 0.5", "must match")
    architecture = cli(*FAST, "--max-steps", "12", "--output", str(out), "--set",
                       "method.student_kwargs.embed_dim=48")  # a narrower student: refused before any weight loads
    assert_usage_error(architecture, "method.student_kwargs: {'embed_dim': 96")
    again = cli(*FAST, "--max-steps", "6", "--output", str(out))
    assert again.returncode == 0 and "is complete at step 6" in again.stdout, again.stdout + again.stderr
    assert snapshot(out) == before  # config.yaml, checkpoints, metrics and summary untouched by all three
    assert "NaN" not in (out / "summary.json").read_text()

    longer = cli(*FAST, "--max-steps", "8", "--output", str(out))
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "changed since the saved run: train.max_steps: 6 → 8" in longer.stdout
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))


# --- 3: no zero-length runs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, words", [("--max-steps", "--max-steps (train.max_steps) must be at least 1"),
                                         ("--epochs", "--epochs (train.epochs) must be at least 1")])
def test_zero_length_runs_are_errors(tmp_path, flag, words):
    assert_usage_error(cli(flag, "0", "--output", str(tmp_path / "run")), words)
    assert not (tmp_path / "run").exists()


# --- 4: --resume never into a used folder ------------------------------------------------------------------------

def test_resume_never_refuses_a_used_folder_unless_told_to_clear_it(tmp_path):
    out = tmp_path / "run"
    assert cli(*FAST, "--max-steps", "4", "--set", "train.checkpoint_every=2", "--output", str(out)).returncode == 0
    before = snapshot(out)
    (out / "notes.txt").write_text("mine")
    assert_usage_error(cli(*FAST, "--resume", "never", "--max-steps", "3", "--output", str(out)),
                       "holds a run", "train.overwrite=true")
    assert {k: v for k, v in snapshot(out).items() if k != "notes.txt"} == before
    cleared = cli(*FAST, "--resume", "never", "--set", "train.overwrite=true", "--max-steps", "3",
                  "--output", str(out))
    assert cleared.returncode == 0, cleared.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_00000003.pt"]
    assert [m["step"] for m in metrics(out)] == [1, 2, 3] and (out / "notes.txt").read_text() == "mine"


# --- 5: SIGINT and SIGTERM save last.pt; resuming reproduces the uninterrupted run -----------------------------

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    result = cli(*FAST, "--max-steps", "30", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(out)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_run_and_resume_reproduces_it(tmp_path, uninterrupted, sig, code):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fastmim.pretrain", *FAST, "--max-steps", "200", "--output", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        logged = out / "metrics.jsonl"
        if logged.is_file() and len(logged.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr and f"stopped by {sig.name} at step" in stdout
    saved = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["step"]
    assert 5 <= saved < 30 and [m["step"] for m in metrics(out)] == list(range(1, saved + 1))
    resumed = cli(*FAST, "--max-steps", "30", "--output", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for a, b in zip(uninterrupted, metrics(out), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), a["step"]


# --- 6: usage errors, before any file is written ----------------------------------------------------------------

def truncated_checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "last.pt"
    torch.save({"method": {}, "step": 1, "padding": torch.zeros(4096)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    return str(path)


def a_file(tmp_path: Path) -> str:
    path = tmp_path / "a_file"
    path.write_text("")
    return str(path)


def tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


ERRORS = {
    "no GPU": (lambda t: ["--device", "cuda"], "--device cuda: no CUDA device", torch.cuda.is_available()),
    "truncated resume": (lambda t: ["--resume", truncated_checkpoint(t)], "could not be read", False),
    "output is a file": (lambda t: ["--output", a_file(t)], "is a file, not a folder", False),
    "log_every 0": (lambda t: ["--set", "train.log_every=0"], "train.log_every must be at least 1", False),
    "accum_steps 0": (lambda t: ["--set", "optim.accum_steps=0"], "optim.accum_steps must be at least 1", False),
    "tensorboard": (lambda t: ["--set", "train.tensorboard=true"], "needs the 'tensorboard' package",
                    tensorboard_installed()),
    "not a ViT": (lambda t: ["--teacher", "resnet50", "--set", "method.teacher_kwargs={}"],
                  "is not a timm VisionTransformer", False),
}


@pytest.mark.parametrize("case", ERRORS)
def test_input_errors_are_one_line_and_write_nothing(tmp_path, case):
    args, words, skip = ERRORS[case]
    if skip:
        pytest.skip("the condition cannot be produced on this machine")
    extra = args(tmp_path)
    output = [] if "--output" in extra else ["--output", str(tmp_path / "run")]
    assert_usage_error(cli(*FAST, "--max-steps", "2", *output, *extra), words)
    assert not (tmp_path / "run").exists()


# --- 8: start-up lines, --help -----------------------------------------------------------------------------------

def test_the_start_reports_what_will_run_and_dropped_images(tmp_path):
    result = cli("--max-steps", "1", "--set", "data.synthetic_images=60", "--set", "data.workers=0",
                 "--output", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    for words in ("maskalign on cpu", "kernels", "attention", "60 images, 28 dropped per epoch", "batch 32",
                  "parameters trained", "peak lr", "steps 0 → 1", f"output {tmp_path / 'run'}",
                  "warning: 28 of 60 images (47 %) are dropped"):
        assert words in result.stdout, (words, result.stdout[:3000])


def test_help_explains_every_flag():
    from fastmim.pretrain import build_parser

    for action in build_parser()._actions:
        assert action.help, action.option_strings
    result = cli("--help")
    assert result.returncode == 0 and "--config FILE" in result.stdout and "train.overwrite" in result.stdout


# --- 9: offline hub teachers --------------------------------------------------------------------------------------

def test_an_unreachable_hub_fails_fast_with_the_way_out(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "TORCH_HOME": str(tmp_path / "torch")}
    start = time.monotonic()
    result = cli(*FAST, "--max-steps", "1", "--teacher-weights", "hub", "--output", str(tmp_path / "run"), env=env)
    assert_usage_error(result, "--teacher-weights FILE", "vit_tiny_patch16_224", "pretrained=True")
    assert not (tmp_path / "run").exists()
    print(f"failed after {time.monotonic() - start:.1f} s")


# --- 10: the smaller items ---------------------------------------------------------------------------------------

def test_readme_stands_alone_and_make_demo_writes_outside_the_checkout():
    assert "../shared" not in (ROOT / "README.md").read_text()
    dry = subprocess.run(["make", "-n", "demo", "DEMO_OUT=/tmp/somewhere"], capture_output=True,
                         text=True, cwd=ROOT)
    assert "--output /tmp/somewhere" in dry.stdout, dry.stdout + dry.stderr
    default = subprocess.run(["make", "-n", "demo"], capture_output=True, text=True, cwd=ROOT)
    assert "--output runs/" not in default.stdout and "fastmim-demo" in default.stdout, default.stdout


def test_benchmarks_write_results_only_when_asked():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import dataloader
    import kernels

    assert kernels.parse_args([]).out is None and dataloader.parse_args([]).out_dir is None
