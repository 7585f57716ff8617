"""The metrics component (torchtitan's MetricsProcessor is the model): everything the training loop reports.

It owns the logging window — device-side sums of the loss, its named terms, the gradient norm and the skipped
steps, the images and the time spent waiting for data — and at each logging step turns it into one record:
**one** collective (an all-reduce of one tensor that also carries each process's skipped images and its stop
and checkpoint votes), images/s, data wait, MFU, the results of the evaluators that are due (the k-NN monitor,
fine-tuning's validation, …; their time is left out of images/s), then metrics.jsonl, TensorBoard and the
progress line, with one rule for values that are not finite (null). Between logging steps it does no host
synchronization. It also tracks the best value of the metric the run keeps `best.pt` by.

The loop only does:

    for batch in metrics.timed(batches):               # the time spent in next() is the data wait
        result = train_step(...)                      # StepResult: device tensors
        decision = metrics.after_step(step, epoch, lr, result, images, votes)
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from fastmim import ops

from .step import StepResult


class NonFiniteLossError(RuntimeError):
    pass


def json_safe(value):
    """JSON has no NaN or infinity: a value that is not finite is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    """metrics.jsonl (one object per logged step) and optional TensorBoard, written by rank 0: numbers as scalars,
    a field naming a PNG the run drew (`picture`: pictures/step_N.png) as an image."""

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
        self.file.write(json.dumps({key: json_safe(v) for key, v in record.items()}, allow_nan=False) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])
                elif isinstance(value, str) and value.endswith(".png"):  # a picture the run drew
                    self.add_picture(key, value, record["step"])

    def add_picture(self, tag: str, path: str, step: int) -> None:
        """A PNG the run wrote (`path` relative to the run's folder) as a TensorBoard image."""
        import numpy as np
        from PIL import Image

        with Image.open(self.path.parent / path) as picture:
            self.tb.add_image(tag, np.asarray(picture.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


@dataclass
class Votes:
    """What one process would decide alone after a step; processes act on them together."""
    stop: str | None = None         # the signal that asked this process to stop (SIGINT/SIGTERM)
    checkpoint: bool = False        # train.checkpoint_minutes have passed since its last save


@dataclass
class Decision:
    """What every process does after a step: stop (naming the signal), whether to save first, and whether the
    step's evaluation is the best so far (save best.pt)."""
    stop: str | None
    checkpoint: bool
    best: bool = False


class Evaluator(Protocol):
    """Something the loop evaluates now and then (the k-NN monitor, a validation set, pictures). Every process
    calls it at the same steps; it returns the fields for that step's record (nothing on processes that only
    wait for rank 0) and a line for the log."""

    def due(self, step: int) -> bool: ...

    def evaluate(self, step: int) -> dict: ...

    def describe(self, step: int, result: dict) -> str | None: ...


@dataclass
class LoggingPlan:
    """When the loop logs: every `log_every` steps, at every evaluation and at the last step."""
    log_every: int
    stop_step: int
    evaluators: list = field(default_factory=list)

    def evaluating(self, step: int) -> list:
        return [e for e in self.evaluators if e.due(step)]

    def logging(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.stop_step or bool(self.evaluating(step))


@dataclass
class Best:
    """The metric best.pt is kept by (higher is better) and its best value so far."""
    key: str
    value: float = float("-inf")
    step: int = 0

    def improved(self, record: dict) -> bool:
        value = record.get(self.key)
        if value is None or not math.isfinite(value) or value <= self.value:
            return False
        self.value, self.step = value, record["step"]
        return True


class Window:
    """Device-side running sums since the last logging step (no host synchronization)."""

    def __init__(self):
        self.sums: torch.Tensor | None = None  # loss, finite steps, skipped steps, gradient norm, *terms
        self.term_names: tuple[str, ...] = ()
        self.images, self.wait, self.start = 0, 0.0, time.perf_counter()

    def add(self, result: StepResult, images: int) -> None:
        finite = 1.0 - result.found_inf
        if self.sums is None:
            self.term_names = tuple(result.terms)
        terms = [result.terms[name].detach().float() for name in self.term_names]
        values = torch.stack([result.loss.detach().float(), finite, result.found_inf,
                              result.grad_norm.detach().float(), *terms])
        values = torch.cat([torch.nan_to_num(values[:1]) * finite, values[1:3], torch.nan_to_num(values[3:]) * finite])
        self.sums = values if self.sums is None else self.sums + values
        self.images += images


class MetricsProcessor:
    def __init__(self, *, plan: LoggingPlan, world_size: int, device: torch.device, writer: MetricsWriter | None,
                 progress, flops_per_image: float, peak_flops: float | None, max_nonfinite: int,
                 skipped_before: int, nonfinite_before: int, best: Best | None = None):
        """writer: rank 0's only (None elsewhere). skipped_before / nonfinite_before: the counts the resumed
        checkpoint carried. best: the metric best.pt is kept by, with the resumed run's best so far."""
        self.plan, self.world_size, self.device = plan, world_size, device
        self.writer, self.progress, self.best = writer, progress, best
        self.flops_per_image, self.peak_flops, self.max_nonfinite = flops_per_image, peak_flops, max_nonfinite
        self.skipped_before, self.nonfinite_before = skipped_before, nonfinite_before
        self.window = Window()
        self.in_a_row = torch.zeros((), device=device)  # non-finite steps in a row, across windows
        self.nonfinite_seen = torch.zeros((), device=device)  # since this process started
        self.logged_images, self.logged_skipped = 0, 0  # every process together, up to the last logging step
        self.local_images, self.final_loss, self.last_evaluation = 0, float("nan"), {}
        self.start = time.perf_counter()

    # --- fed by the loop ---------------------------------------------------------------------------------
    def timed(self, batches):
        """`batches` with the time spent waiting for each one added to the window's data wait."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            self.window.wait += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def after_step(self, step: int, epoch: int, lr: float, result: StepResult, images: int, skipped: int,
                   votes: Votes) -> Decision:
        """Add the step to the window; at a logging step write the record. One process decides alone after
        every step; several agree at logging steps, in the record's collective. skipped: this process's
        unreadable images so far."""
        self.window.add(result, images)
        self.in_a_row.mul_(result.found_inf).add_(result.found_inf)  # resets to 0 on a finite step
        self.nonfinite_seen.add_(result.found_inf)
        self.local_images += images
        if not self.plan.logging(step):
            return Decision(votes.stop, votes.checkpoint) if self.world_size == 1 else Decision(None, False)
        return self.log(step, epoch, lr, skipped, votes)

    # --- a logging step ------------------------------------------------------------------------------------
    def log(self, step: int, epoch: int, lr: float, skipped: int, votes: Votes) -> Decision:
        evaluation, evaluation_seconds = self._evaluate(step)
        ops.check_device_errors(self.device)  # the kernels' record of out-of-range indices (GPU)
        window, names = self.window, self.window.term_names
        host = torch.tensor([float(skipped), float(window.images), float(votes.stop is not None),
                             float(votes.checkpoint)], device=self.device)
        packed = torch.cat([window.sums.float(), self.in_a_row[None].float(), host])
        if dist.is_initialized():  # the logging step's one collective
            dist.all_reduce(packed)
        values = packed.cpu().tolist()
        loss_sum, finite, _, norm_sum, *rest = values
        terms, (in_a_row, skipped_all, images_all, stop_votes, checkpoint_votes) = rest[:len(names)], rest[len(names):]
        in_a_row /= self.world_size  # identical on every process: the skip flag is agreed each step
        if in_a_row >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"the loss was not finite for {int(in_a_row)} steps in a row (limit train.max_nonfinite="
                f"{self.max_nonfinite}) at step {step}; lower the learning rate, enable optim.clip_grad, or check "
                "the data")
        elapsed = time.perf_counter() - window.start - evaluation_seconds
        per_step = lambda total: total / finite if finite else float("nan")  # noqa: E731
        self.final_loss = per_step(loss_sum)
        self.logged_images += int(images_all)
        self.logged_skipped = int(skipped_all)
        images_per_sec = images_all / elapsed if elapsed > 0 else 0.0
        record = {"step": step, "epoch": epoch, "loss": self.final_loss,
                  **{name: per_step(value) for name, value in zip(names, terms)},
                  "lr": lr, "grad_norm": per_step(norm_sum), "images_per_sec": images_per_sec,
                  "data_wait": window.wait / elapsed if elapsed > 0 else 0.0,
                  "skipped_images": self.skipped_before + self.logged_skipped,
                  "nonfinite_steps": self.nonfinite_before + self.nonfinite_count()}
        if self.peak_flops:  # model FLOPs per second per device against the device's peak
            record["mfu"] = self.flops_per_image * images_per_sec / self.world_size / self.peak_flops
        record.update(evaluation)
        if self.writer:
            self.writer.write(record)
        self.progress.update(record)
        self.window = Window()
        stop = (votes.stop or "SIGTERM") if stop_votes else None
        return Decision(stop, bool(checkpoint_votes), self.best is not None and self.best.improved(record))

    def _evaluate(self, step: int) -> tuple[dict, float]:
        """The due evaluators' fields and the seconds they took (left out of the window's images/s)."""
        fields, start = {}, time.perf_counter()
        for evaluator in self.plan.evaluating(step):
            result = evaluator.evaluate(step)
            line = evaluator.describe(step, result) if result else None
            if line:
                self.progress.log(line)
            fields.update(result)
        self.last_evaluation.update({k: v for k, v in fields.items() if not k.endswith("_seconds")})
        return fields, time.perf_counter() - start

    # --- the run's totals ------------------------------------------------------------------------------------
    def nonfinite_count(self) -> int:
        """Steps skipped since this process started (the same on every process: the skip flag is agreed)."""
        return int(self.nonfinite_seen.item())

    def totals(self, skipped: int) -> dict:
        """The run's unreadable images (`skipped`: every process's since this one started) and skipped steps,
        including what the resumed checkpoint carried: for checkpoints and the summary."""
        return {"skipped_images": self.skipped_before + skipped,
                "nonfinite_steps": self.nonfinite_before + self.nonfinite_count()}

    def summary(self, step: int, steps_per_epoch: int, skipped: int) -> dict:
        """summary.json's figures (`skipped`: this process's unreadable images). With several processes every run
        ends on a logging step, so the logged totals are the job's; one process counts its own."""
        seconds = time.perf_counter() - self.start
        images = self.local_images if self.world_size == 1 else self.logged_images
        skipped = skipped if self.world_size == 1 else self.logged_skipped
        return {"steps": step, "epochs": round(step / steps_per_epoch, 3), "images": images,
                "seconds": round(seconds, 3), "images_per_sec": images / seconds if seconds > 0 else 0.0,
                "final_loss": self.final_loss, **self.totals(skipped), **self.last_evaluation}
