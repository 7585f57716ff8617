import csv
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import dataloader  # noqa: E402

from fastmim.data import dali_available  # noqa: E402


def test_benchmark_runs_every_backend_and_writes_csv_and_json(tmp_path):
    result = dataloader.main(["--images", "24", "--width", "64", "--height", "48", "--img-size", "32",
                              "--batch-size", "4", "--rounds", "2", "--out-dir", str(tmp_path)])
    gpu = torch.cuda.is_available()
    expected = {"torchvision", "synthetic"} | ({"dali-cpu"} | ({"dali-gpu"} if gpu else set())
                                               if dali_available() else set())
    assert {row["backend"] for row in result["results"]} == expected  # a GPU row only with a GPU
    for row in result["results"]:
        assert row["images_per_epoch"] == 24 and row["rounds"] == 2
        assert 0 < row["images_per_sec_min"] <= row["images_per_sec"] <= row["images_per_sec_max"]
    stem = tmp_path / ("dataloader_cuda" if gpu else "dataloader_cpu")
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["device"].startswith("CPU") != gpu and "torch" in saved["versions"]
    rows = list(csv.DictReader(open(stem.with_suffix(".csv"))))
    assert {r["backend"] for r in rows} == expected
    if dali_available():
        by = {r["backend"]: r for r in result["results"]}
        assert saved["ratios"]["dali_cpu_over_torchvision"] == by["dali-cpu"]["images_per_sec"] / \
            by["torchvision"]["images_per_sec"]
