import json
from pathlib import Path

from fastmim.pretrain import main

FAST = ["--recipe", "demo", "--batch-size", "8", "--set", "data.synthetic_images=128", "--set", "data.workers=0",
        "--set", "train.log_every=1"]


def pretrain(output: Path, *args: str) -> int:
    return main([*FAST, "--output", str(output), *args])


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]


def summary(output: Path) -> dict:
    return json.loads((Path(output) / "summary.json").read_text())
