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
    """Device-side running sums between two logging points; `term_sum` follows `term_names` (the method's
    named loss terms, learned from its first output)."""
    loss_sum: torch.Tensor
    finite_steps: torch.Tensor
    nonfinite_total: torch.Tensor
    nonfinite_in_a_row: torch.Tensor
    term_sum: torch.Tensor | None = None
    term_names: tuple[str, ...] = ()

    @classmethod
    def zeros(cls, device) -> "StepStats":
        z = lambda: torch.zeros((), device=device)  # noqa: E731
        return cls(z(), z(), z(), z())

    def next_window(self) -> "StepStats":
        """Fresh sums for the next logging window; the in-a-row count runs on across windows."""
        fresh = StepStats.zeros(self.loss_sum.device)
        fresh.nonfinite_in_a_row = self.nonfinite_in_a_row
        fresh.term_names = self.term_names
        return fresh

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], found_inf: torch.Tensor) -> None:
        finite = 1.0 - found_inf
        self.loss_sum += torch.nan_to_num(loss.detach().float()) * finite
        if not self.term_names:
            self.term_names = tuple(terms)
        values = torch.stack([terms[name].detach().float() for name in self.term_names]) if terms else None
        if values is not None:
            values = torch.nan_to_num(values) * finite
            self.term_sum = values if self.term_sum is None else self.term_sum + values
        self.finite_steps += finite
        self.nonfinite_total += found_inf
        self.nonfinite_in_a_row.mul_(found_inf).add_(found_inf)  # resets to 0 on a finite step


def supports_found_inf(optimizer) -> bool:
    return getattr(optimizer, "_step_supports_amp_scaling", False)


def train_step(model, optimizer, micro_batches: list[torch.Tensor], autocast: contextlib.AbstractContextManager,
               clip_grad: float | None, stats: StepStats):
    """Forward and backward over the micro-batches (DDP syncs only on the last), then the optimizer step."""
    ddp = hasattr(model, "no_sync")
    total, terms = None, {}
    for i, images in enumerate(micro_batches):
        sync = not ddp or i == len(micro_batches) - 1
        with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
            out = model(images)
        (out.loss / len(micro_batches)).backward()
        total = out.loss.detach() if total is None else total + out.loss.detach()
        for name, value in out.terms.items():
            terms[name] = terms[name] + value.detach() if name in terms else value.detach()
    loss = total / len(micro_batches)
    terms = {name: value / len(micro_batches) for name, value in terms.items()}
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
    stats.add(loss, terms, found_inf)
    return loss
