"""Every benchmark script answers a bad argument or a missing GPU with one `error:` line and exit code 2, never a
traceback, and refuses flag prefixes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_GPU = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                         capture_output=True, text=True).stdout.strip() == "True"

CASES = {
    "throughput-prefix": ["throughput.py", "--batch", "3"],
    "throughput-zero-batch": ["throughput.py", "--batch-size", "0"],
    "dataloader-missing-data": ["dataloader.py", "--data", "/no/such/folder"],
    "dataloader-unknown-backend": ["dataloader.py", "--backends", "torchvision,nvjpeg"],
    "kernels-bad-number": ["kernels.py", "--repeats", "two"],
    "masks-prefix": ["masks.py", "--rep", "2"],
    "startup-prefix": ["startup.py", "--rep", "2"],
}
GPU_CASES = {name: ["--device", "cuda"] for name in ("throughput.py", "masks.py")}  # the others share its check


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, script: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"python benchmarks/{script}: error: "), result.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_argument_is_one_error_line(case):
    script, *args = CASES[case]
    assert_one_error_line(run(script, *args), script)


@pytest.mark.skipif(HAS_GPU, reason="there is a GPU here")
@pytest.mark.parametrize("script", list(GPU_CASES))
def test_asking_for_a_gpu_without_one_is_one_error_line(script):
    result = run(script, *GPU_CASES[script])
    assert_one_error_line(result, script)
    assert "--device cuda" in result.stderr
