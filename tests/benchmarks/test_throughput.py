import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import throughput  # noqa: E402


@pytest.mark.parametrize("method,teacher_size", [("maskalign", "tiny"), ("maskalign", "base"), ("mae", "tiny"),
                                                 ("mrmae", "tiny"), ("maskdistill", "tiny")])
def test_the_two_paths_compute_the_same_loss(method, teacher_size):
    args = throughput.parse_args(["--method", method, "--model", "tiny", "--teacher-size", teacher_size,
                                  "--img-size", "64", "--dtype", "fp32", "--device", "cpu"])
    args.dtype = "fp32"
    fastmim_method, reference = throughput.build_paths(args, torch.device("cpu"))
    images = torch.randn(4, 3, 64, 64)
    out = fastmim_method(images)
    expected = reference(images, mask=out.mask)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms, expected.terms, rtol=1e-5, atol=1e-6)
    if method == "maskalign":  # the reference's own attention masking draws from the same importance
        torch.testing.assert_close(fastmim_method.frozen_pass(images).importance,
                                   reference.frozen_pass(images).importance, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["maskalign", "mae", "maskdistill"])
def test_benchmark_runs_end_to_end_and_writes_its_json(tmp_path, method):
    out = tmp_path / "result.json"
    throughput.main(["--method", method, "--model", "tiny", "--teacher-size", "tiny", "--img-size", "64",
                     "--batch-size", "4",
                     "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--warmup", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"device", "versions", "config", "speedup", "fastmim", "reference"} <= result.keys()
    for path in ("fastmim", "reference"):
        r = result[path]
        assert r["images_per_sec_min"] <= r["images_per_sec"] <= r["images_per_sec_max"]
        assert {"data", "teacher_forward", "student_forward", "backward", "optimizer"} == r["breakdown"].keys()
        assert 0 < r["mfu"] < 1 and r["peak_memory_mb"] >= 0
    assert result["speedup"] == pytest.approx(result["fastmim"]["images_per_sec"] / result["reference"]["images_per_sec"])


@pytest.mark.parametrize("fast_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_dtype_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(throughput, "cpu_has_fast_bf16", lambda: fast_bf16)
    args = throughput.parse_args(["--device", "cpu"])
    assert args.dtype == "auto"
    assert throughput.resolve_dtype(args, torch.device("cpu")) == expected
