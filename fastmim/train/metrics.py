"""metrics.jsonl (one object per logged step) and optional TensorBoard, written by rank 0."""
from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    def __init__(self, folder: Path, resume_step: int, tensorboard: bool):
        self.path = Path(folder) / "metrics.jsonl"
        # Lines past the checkpoint we resume from were logged by a run that did not save them: drop them so
        # the file reads as one uninterrupted run.
        kept = [m for m in read_metrics(self.path) if m["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(m) + "\n" for m in kept))
        self.file = open(self.path, "a")
        self.tb = self._tensorboard(folder) if tensorboard else None

    @staticmethod
    def _tensorboard(folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise RuntimeError("train.tensorboard=true needs the 'tensorboard' package "
                               "(pip install 'fastmim[tensorboard]')") from error
        return SummaryWriter(str(Path(folder) / "tensorboard"))

    def write(self, record: dict) -> None:
        clean = {key: None if isinstance(v, float) and not math.isfinite(v) else v for key, v in record.items()}
        self.file.write(json.dumps(clean, allow_nan=False) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
