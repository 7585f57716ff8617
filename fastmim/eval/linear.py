"""MAE's linear probe (facebookresearch/mae main_linprobe.py) on cached features: BatchNorm1d without affine
(eps 1e-6) then Linear (weights normal, std 0.01; zero bias), cross-entropy, LARS (momentum 0.9, trust
coefficient 0.001; weight decay 0 by default, none on 1-D parameters) or SGD with momentum 0.9, lr = base_lr ×
batch / 256, per-iteration linear warmup then half-cosine to min_lr. Features are extracted once with the
evaluation transform (MAE augments every epoch; on cached features there is no augmentation)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class LinearProbeConfig:
    epochs: int = 90
    batch_size: int = 16384
    base_lr: float = 0.1            # lr = base_lr × batch_size / 256 (MAE: blr 0.1)
    min_lr: float = 0.0
    warmup_epochs: int = 10
    weight_decay: float = 0.0
    optimizer: str = "lars"         # lars / sgd
    seed: int = 0


class LARS(torch.optim.Optimizer):
    """LARS as MAE's util/lars.py: for parameters with more than one dimension the update (gradient plus weight
    decay) is scaled by trust_coefficient · ‖p‖ / ‖update‖; then momentum SGD."""

    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(param_norm > 0.0, torch.where(
                        update_norm > 0, group["trust_coefficient"] * param_norm / update_norm, one), one)
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])


def probe_head(dim: int, classes: int) -> nn.Sequential:
    linear = nn.Linear(dim, classes)
    nn.init.normal_(linear.weight, std=0.01)  # MAE: trunc_normal_(std=0.01), a 2-sigma cut that never binds here
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def learning_rate(it: float, cfg: LinearProbeConfig, peak: float) -> float:
    """MAE's adjust_learning_rate at fractional epoch `it`."""
    if it < cfg.warmup_epochs:
        return peak * it / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * (it - cfg.warmup_epochs) / span))


def accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    head.eval()
    with torch.no_grad():
        ranked = head(features).topk(min(5, head[1].out_features), dim=1).indices
    correct = ranked == labels[:, None]
    n = correct.shape[0]
    return correct[:, :1].any(1).sum().item() * 100.0 / n, correct.any(1).sum().item() * 100.0 / n


def train_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, cfg: LinearProbeConfig,
                steps: int | None = None) -> nn.Sequential:
    """The trained head (all `cfg.epochs`, or the first `steps` iterations)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = probe_head(features.shape[1], classes)
    batch = min(cfg.batch_size, features.shape[0])
    peak = cfg.base_lr * batch / 256
    if cfg.optimizer == "lars":
        optimizer = LARS(head.parameters(), weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(head.parameters(), lr=peak, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be lars or sgd, got {cfg.optimizer!r}")
    per_epoch = max(features.shape[0] // batch, 1)
    loss_fn = nn.CrossEntropyLoss()
    done = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        head.train()
        for i in range(per_epoch):
            if steps is not None and done >= steps:
                return head
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch + i / per_epoch, cfg, peak)
            rows = order[i * batch:(i + 1) * batch]
            loss = loss_fn(head(features[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
    return head


def linear_probe(train_features, train_labels, val_features, val_labels, cfg: LinearProbeConfig) -> dict:
    """{'top1', 'top5'} on the validation features (percent) after training on the training features."""
    classes = int(max(train_labels.max().item(), val_labels.max().item()) + 1)
    head = train_probe(train_features.float(), train_labels.long(), classes, cfg)
    top1, top5 = accuracy(head, val_features.float(), val_labels.long())
    return {"top1": top1, "top5": top5}
