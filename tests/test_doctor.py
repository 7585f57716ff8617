"""`python -m fastmim.doctor` on the CPU: it reports the environment, checks every fused op and a short
training run against the references, exits 0 when they agree and 1 when a kernel is wrong."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fastmim import doctor
from fastmim.ops import _backend


def test_doctor_runs_on_the_cpu_and_reports(tmp_path):
    out = tmp_path / "doctor.json"
    result = subprocess.run([sys.executable, "-m", "fastmim.doctor", "--device", "cpu", "--steps", "5", "--json",
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for words in ("torch", "fastmim._C", "SASS", "DALI", "flash-attn", "xformers", "NVIDIA apex", "CPU",
                  "fused ops against the references on cpu", "all checks passed"):
        assert words in result.stdout, words
    report = json.loads(out.read_text())
    checked = {(c["op"], c["dtype"]) for c in report["ops"]["cpu"]}
    assert {op for op, _ in checked} == {"masked_patch_embed", "dynamic_align", "align_loss", "masked_pixel_loss",
                                         "block_mask"}
    assert {dtype for op, dtype in checked if op != "block_mask"} == {"torch.float32", "torch.bfloat16"}
    assert report["training"][0]["ok"] and len(report["training"][0]["fused"]) == 5
    assert report["problems"] == []


def test_a_wrong_kernel_is_a_mismatch_and_exit_code_1(monkeypatch, capsys):
    fused = _backend.fused_ops()
    right = fused.dynamic_align
    monkeypatch.setattr(fused, "dynamic_align", lambda *args: right(*args) * 1.01)
    assert doctor.main(["--device", "cpu", "--steps", "3"]) == 1
    out = capsys.readouterr()
    assert "MISMATCH" in out.out and "problem: cpu: dynamic_align float32 out" in out.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_is_refused_without_a_gpu(capsys):
    with pytest.raises(SystemExit) as error:
        doctor.main(["--device", "cuda"])
    assert error.value.code == 2
    assert "no such device here" in capsys.readouterr().err


@pytest.mark.cuda
def test_doctor_passes_on_the_gpu():
    result = subprocess.run([sys.executable, "-m", "fastmim.doctor", "--device", "cuda"], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fused ops against the references on cuda:0" in result.stdout
