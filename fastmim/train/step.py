"""One optimizer step of any method, without a host synchronization.

A non-finite loss or gradient norm anywhere in the job skips the update on every rank through the fused
optimizer's `found_inf` input, the same mechanism GradScaler uses. The step returns its loss, named terms,
gradient norm and skip flag as device tensors; the metrics component (metrics.py) sums them on the device and
reads them only when it logs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class StepResult:
    loss: torch.Tensor                # the mean loss over the micro-batches
    terms: dict[str, torch.Tensor]    # the method's named loss terms, likewise
    grad_norm: torch.Tensor           # the gradients' global L2 norm, before clipping
    found_inf: torch.Tensor           # 1.0 when the update was skipped (non-finite loss or gradient)


def to_device(batch, device):
    """A batch — the images, or a tuple of tensors (images, labels, …) — on `device`, copied asynchronously."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(part.to(device, non_blocking=True) for part in batch)
    return batch.to(device, non_blocking=True)


def batch_size(batch) -> int:
    return (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]


def supports_found_inf(optimizer) -> bool:
    return getattr(optimizer, "_step_supports_amp_scaling", False)


def gradients_norm(optimizer, clip_grad: float | None) -> torch.Tensor:
    """The global gradient norm (what clipping compares with max_norm), then the clip when asked."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if clip_grad is not None:
        torch.nn.utils.clip_grads_with_norm_(params, clip_grad, norm)
    return norm


def train_step(model, optimizer, micro_batches: list, autocast: contextlib.AbstractContextManager,
               clip_grad: float | None) -> StepResult:
    """Forward and backward over the micro-batches (DDP syncs only on the last), then the optimizer step."""
    ddp = hasattr(model, "no_sync")
    total, terms = None, {}
    for i, batch in enumerate(micro_batches):
        sync = not ddp or i == len(micro_batches) - 1
        with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
            out = model(batch)
        (out.loss / len(micro_batches)).backward()
        total = out.loss.detach() if total is None else total + out.loss.detach()
        for name, value in out.terms.items():
            terms[name] = terms[name] + value.detach() if name in terms else value.detach()
    loss = total / len(micro_batches)
    terms = {name: value / len(micro_batches) for name, value in terms.items()}
    norm = gradients_norm(optimizer, clip_grad)
    found_inf = torch.maximum((~torch.isfinite(loss)).float(), (~torch.isfinite(norm)).float())
    if dist.is_initialized():  # one rank's NaN poisons everyone's averaged gradients: all must skip
        dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
    if supports_found_inf(optimizer):
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        optimizer.step()
    elif not bool(found_inf):  # optimizers without found_inf (apex) pay one sync to skip
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, terms, norm, found_inf)
