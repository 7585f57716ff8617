"""One optimizer step of any method, without a host synchronization.

A non-finite loss (or gradient norm) anywhere in the job skips the update on every rank through the fused
optimizer's `found_inf` input, the same mechanism GradScaler uses; counts are kept on the device and read
only when the trainer logs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class StepStats:
    """Device-side running sums between two logging points."""
    loss_sum: torch.Tensor
    finite_steps: torch.Tensor
    nonfinite_total: torch.Tensor
    nonfinite_in_a_row: torch.Tensor
    level_loss_sum: torch.Tensor | None = None

    @classmethod
    def zeros(cls, device) -> "StepStats":
        z = lambda: torch.zeros((), device=device)  # noqa: E731
        return cls(z(), z(), z(), z())

    def next_window(self) -> "StepStats":
        """Fresh sums for the next logging window; the in-a-row count runs on across windows."""
        fresh = StepStats.zeros(self.loss_sum.device)
        fresh.nonfinite_in_a_row = self.nonfinite_in_a_row
        return fresh

    def add(self, loss: torch.Tensor, level_losses: torch.Tensor, found_inf: torch.Tensor) -> None:
        finite = 1.0 - found_inf
        self.loss_sum += torch.nan_to_num(loss.detach().float()) * finite
        levels = torch.nan_to_num(level_losses.detach().float()) * finite
        self.level_loss_sum = levels if self.level_loss_sum is None else self.level_loss_sum + levels
        self.finite_steps += finite
        self.nonfinite_total += found_inf
        self.nonfinite_in_a_row.mul_(found_inf).add_(found_inf)  # resets to 0 on a finite step


def supports_found_inf(optimizer) -> bool:
    return getattr(optimizer, "_step_supports_amp_scaling", False)


def train_step(model, optimizer, micro_batches: list[torch.Tensor], autocast: contextlib.AbstractContextManager,
               clip_grad: float | None, stats: StepStats):
    """Forward and backward over the micro-batches (DDP syncs only on the last), then the optimizer step."""
    ddp = hasattr(model, "no_sync")
    total, level_losses = None, None
    for i, images in enumerate(micro_batches):
        sync = not ddp or i == len(micro_batches) - 1
        with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
            out = model(images)
        (out.loss / len(micro_batches)).backward()
        total = out.loss.detach() if total is None else total + out.loss.detach()
        level_losses = out.level_losses.detach() if level_losses is None else level_losses + out.level_losses.detach()
    loss, level_losses = total / len(micro_batches), level_losses / len(micro_batches)
    found_inf = (~torch.isfinite(loss)).float()
    if clip_grad is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        found_inf = torch.maximum(found_inf, (~torch.isfinite(norm)).float())
    if dist.is_initialized():  # one rank's NaN poisons everyone's averaged gradients: all must skip
        dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
    if supports_found_inf(optimizer):
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        optimizer.step()
    elif not bool(found_inf):  # optimizers without found_inf (apex) pay one sync to skip
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    stats.add(loss, level_losses, found_inf)
    return loss
