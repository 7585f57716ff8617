"""benchmarks/kernels.py runs end to end on tiny shapes and writes its CSV (device, versions, ratios)."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import kernels  # noqa: E402

TINY = ["--batch", "2", "--patches", "16", "--kept", "5", "--dim", "24", "--levels", "2", "--student-levels", "3",
        "--repeats", "2", "--warmup", "1", "--device", "cpu"]


def read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_all_ops_all_stages(tmp_path):
    out = tmp_path / "k.csv"
    assert kernels.main([*TINY, "--no-memory", "--out", str(out)]) == 0
    rows = read(out)
    variants = {(r["op"], r["variant"]) for r in rows}
    assert variants == {("masked_patch_embed", "fused"), ("masked_patch_embed", "reference"),
                        ("masked_patch_embed", "conv_gather"), ("align_loss", "fused"), ("align_loss", "reference"),
                        ("dynamic_align", "fused"), ("dynamic_align", "reference"), ("masked_pixel_loss", "fused"),
                        ("masked_pixel_loss", "reference")}
    assert len(rows) == 3 * len(variants)
    for r in rows:
        assert float(r["min_ms"]) <= float(r["median_ms"]) <= float(r["max_ms"])
        assert r["device"].startswith("CPU:") and r["torch"] and r["python"] and r["dtype"] == "float32"
        if r["variant"] == "reference":
            assert float(r["speedup_vs_reference"]) == pytest.approx(1.0)
    conv = [r for r in rows if r["op"] == "masked_patch_embed"]
    assert all(r["speedup_vs_conv_gather"] for r in conv)


def test_cpu_memory_is_measured_in_child_processes(tmp_path):
    out = tmp_path / "k.csv"
    assert kernels.main([*TINY, "--ops", "align_loss", "--out", str(out)]) == 0
    for r in read(out):
        assert not math.isnan(float(r["peak_mb"])) and float(r["peak_mb"]) >= 0
        if r["stage"] == "forward":
            assert not math.isnan(float(r["kept_mb"]))
