import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import teacher_last_block  # noqa: E402


def test_benchmark_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "teacher.json"
    result = teacher_last_block.main(["--teacher", "vit_tiny_patch16_224", "--batch-size", "2", "--rounds", "2",
                                      "--out", str(out)])
    assert json.loads(out.read_text())["speedup"] == result["speedup"] > 0
    assert set(result["median_s"]) == {"every_row", "kept_rows"} and "device" in result and "versions" in result
