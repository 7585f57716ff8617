"""benchmarks/gpu.py on this machine without a GPU: one `error:` line and exit 2. Every part's code path runs with
the device forced to the CPU (its hidden --device cpu --quick): the doctor, the @pytest.mark.cuda tests (skipped
here), throughput.py's runs without and with --compile, DALI's decoding (its CPU decoder here), and the JSON and
Markdown report. To keep this short, throughput.py's models are the methods' demo configurations, its peak memory
is read in this process (its child-process probe is tested in test_throughput.py), --compile uses torch.compile's
eager backend (dynamo's tracing without the C++ code generation) and everything runs on one thread."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmim.data import dali_available
from fastmim.recipes import recipe

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu  # noqa: E402
import throughput  # noqa: E402
from bench_utils import memory_meter  # noqa: E402

DEMOS = {"maskalign": "demo", "mae": "demo_mae", "mrmae": "demo_mrmae", "maskdistill": "demo_maskdistill"}
SMALL_TESTS = "tests/methods/test_masks.py"  # one @pytest.mark.cuda test, quick to collect


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("benchmarks/gpu.py: error: no CUDA GPU here") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [(["--methods", "dino"], "--methods 'dino'"),
                                         (["--kernels", ""], "--kernels ''"),
                                         (["--skip", "doctor,nap"], "--skip"), (["--budget", "0"], "--budget")])
def test_bad_arguments_are_one_error_line_and_exit_2(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        gpu.parse_args(["--out", str(tmp_path), "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"benchmarks/gpu.py: error: {words}") and err.count("\n") == 1


def demo_config(args):
    """The method's CPU demo configuration in place of throughput.py's ViT sizes."""
    return recipe(DEMOS[args.method]).method


@pytest.fixture
def small_throughput(monkeypatch):
    # One thread here and in the doctor's and pytest's processes: no figure is checked, and on a loaded machine
    # OpenMP's spinning threads make these steps many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(throughput, "method_config", demo_config)
    monkeypatch.setattr(throughput, "peak_memory",
                        lambda path, images, device, sync, argv: memory_meter(device, lambda: path.step(images), sync))
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compile_module(self, backend="eager"))
    yield
    torch.set_num_threads(threads)


def test_every_part_runs_on_the_cpu_and_writes_json_and_markdown(tmp_path, small_throughput):
    out = tmp_path / "report"
    code = gpu.main(["--out", str(out), "--device", "cpu", "--quick", "--tests", SMALL_TESTS])  # every method
    result = json.loads((out / "gpu.json").read_text())
    assert code == 0 and result["problems"] == [], result["problems"]
    env = result["environment"]
    assert env["device"].startswith("CPU") and env["torch"] == torch.__version__
    assert {"driver", "cuda", "fastmim_commit", "versions", "date"} <= env.keys()

    doctor = result["doctor"]
    assert doctor["exit_code"] == 0 and "all checks passed" in doctor["output"] and doctor["report"]["problems"] == []
    tests = result["tests"]
    assert (tests["selected"], tests["skipped"], tests["passed"], tests["failed"], tests["errors"]) == (1, 1, 0, 0, 0)
    assert tests["failures"] == [] and tests["exit_code"] == 0

    for part, compiled in (("throughput", False), ("compile", True)):
        assert [(r["method"], r["kernels"], r["compile"]) for r in result[part]] == \
            [(method, "fused", compiled) for method in ("maskalign", "mae", "mrmae", "maskdistill")]
        for run in result[part]:
            assert run["batch_size"] == 4 and run["out_of_memory_at"] == [] and run["kernels_in_use"] == "fused"
            for path in run["paths"].values():
                assert path["images_per_sec_min"] <= path["images_per_sec"] <= path["images_per_sec_max"]
                assert 0 < path["mfu"] < 1 and path["mfu_vendor_peak"] is None
                assert isinstance(path["peak_memory_mb"], float)  # in-process on the CPU: other threads blur it
                assert tuple(path["breakdown_ms"]) == gpu.STAGES

    if dali_available():
        rows = result["dali"]["rows"]
        assert [(r["decoder"], r["hw_decoder_load"]) for r in rows] == [("cpu", 0.65), ("cpu", 0.0)]
        assert all(r["images_per_sec"] > 0 and r["images_per_epoch"] == 16 for r in rows)

    report = (out / "gpu.md").read_text()
    for heading in ("# fastmim on CPU", "## `python -m fastmim.doctor`", "## `@pytest.mark.cuda` tests",
                    "## Training step", "## DALI decoding", "## Problems"):
        assert heading in report, heading
    assert "| method | kernels | --compile | batch | path | images/s | MFU (measured peak) |" in report
    assert report.count("| maskalign | fused |") == 4  # two paths, without and with --compile
    assert "0 passed, 0 failed, 0 errors, 1 skipped of 1 selected" in report


def test_parts_past_the_budget_are_recorded_as_not_run(tmp_path):
    assert gpu.main(["--out", str(tmp_path), "--device", "cpu", "--budget", "1e-9"]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert all(result[part] == {"not_run": "time budget"} for part in gpu.PARTS)
    assert "not run: time budget" in (tmp_path / "gpu.md").read_text()


def test_the_largest_batch_that_fits():
    def run(batch):
        if batch > 128:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"batch": batch}

    assert gpu.largest_fitting(gpu.BATCHES, run) == (128, [256], {"batch": 128})
    assert gpu.largest_fitting((256,), run) == (None, [256], None)


def test_the_cuda_tests_are_counted_even_when_cut_short(tmp_path):
    lines = [{"collected": 5}, {"test": "a", "when": "call", "outcome": "passed"},
             {"test": "b", "when": "call", "outcome": "failed"}, {"test": "c", "when": "setup", "outcome": "failed"},
             {"test": "d", "when": "setup", "outcome": "skipped"}]  # the fifth never ran
    path = tmp_path / "outcomes.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert gpu.count_outcomes(path) == {"selected": 5, "passed": 1, "failed": 1, "errors": 1, "skipped": 1,
                                        "failures": ["b", "c (setup)"]}
