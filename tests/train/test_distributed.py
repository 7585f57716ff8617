import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_process_torchrun_on_the_cpu(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fastmim.pretrain", "--recipe", "demo", "--max-steps", "10", "--batch-size", "8",
               "--set", "data.workers=0", "--output", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["images"] == 10 * 8 * 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 10


def collectives(tmp_path, log_every: int) -> int:
    """Collectives fastmim calls in a 6-step, 2-process run logging every `log_every` steps."""
    counts = tmp_path / f"counts_{log_every}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tests.train.count_collectives", str(counts), "--recipe", "demo", "--max-steps", "6",
               "--batch-size", "8", "--set", "data.workers=0", "--set", "data.synthetic_images=64",
               "--set", f"train.log_every={log_every}", "--output", str(tmp_path / f"run_{log_every}")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / f"run_{log_every}" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in records)
    return sum(json.loads(counts.read_text()).values())


def test_a_logging_step_makes_one_collective(tmp_path):
    """Logging every step (6 logging steps) against every third (steps 3 and 6): the 4 extra logging steps cost
    exactly 4 collectives. The rest — each step's agreed skip flag, the final checkpoint's gather and barriers —
    is the same in both runs."""
    assert collectives(tmp_path, 1) - collectives(tmp_path, 3) == 4
