"""The optimizer: torch's fused AdamW by default, NVIDIA apex FusedAdam / FusedLAMB on request."""
from __future__ import annotations

import importlib.util

import torch

OPTIMIZERS = ("adamw", "apex_adam", "apex_lamb")


def build_optimizer(name: str, param_groups: list[dict], lr: float, betas) -> torch.optim.Optimizer:
    if name == "adamw":
        # fused: one kernel for all parameters (CUDA and CPU), and it honours `found_inf`, which lets a
        # step with a non-finite loss be skipped on the device without a host synchronization
        return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), fused=True)
    if name in ("apex_adam", "apex_lamb"):
        if importlib.util.find_spec("apex") is None or importlib.util.find_spec("apex.optimizers") is None:
            raise RuntimeError(
                f"optimizer {name!r} needs NVIDIA apex built from source (github.com/NVIDIA/apex); it is not "
                "installed. Note: the PyPI package named 'apex' is unrelated. Use optimizer 'adamw' instead."
            )
        from apex.optimizers import FusedAdam, FusedLAMB

        cls = FusedAdam if name == "apex_adam" else FusedLAMB
        return cls(param_groups, lr=lr, betas=tuple(betas), adam_w_mode=True)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's lr on every group, times the group's `lr_scale` where it has one (layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
