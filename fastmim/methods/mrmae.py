"""MR-MAE ("Mimic before Reconstruct", interpretation: there is no official code). MAE's encoder, mask and
decoder, plus, per teacher (CLIP and/or DINO), a linear head on the encoder's final-norm output at the CLS and
kept tokens, whose target is that teacher's last block output at the same rows, LayerNorm-normalized per row
(no affine). Mimicry lands on the visible tokens, reconstruction on the masked ones: the two targets never share
a token. Total = pixel + Σ_teacher weight · mimic. With mask_mode attention ("focused mimicking") the kept set
is drawn from the first teacher's CLS importance."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fastmim import ops
from fastmim.data_config import ImageSpec

from .base import MethodOutput
from .builders import build_teacher
from .configs import MRMAEConfig
from .flops import StepFlops, teacher_flops
from .heads import xavier_linear
from .mae import MAE
from .masks import Mask, draw_mask, num_kept


@dataclass
class MRMAEFrozen:
    mask: Mask
    targets: list[torch.Tensor]  # per teacher, its last level [1, B, 1+N, Dt] (computed at CLS + kept rows)


def per_teacher(cfg: MRMAEConfig, name: str) -> tuple:
    """A per-teacher setting: one entry per teacher, or a single one for all."""
    values = tuple(getattr(cfg, name))
    if len(values) == 1:
        return values * len(cfg.teachers)
    if len(values) != len(cfg.teachers):
        raise ValueError(f"{name} must have one entry per teacher ({len(cfg.teachers)}) or one for all, got "
                         f"{list(values)}")
    return values


def check_options(cfg: MRMAEConfig) -> None:
    if not 1 <= len(cfg.teachers) <= 2:
        raise ValueError(f"teachers must name one or two teachers, got {list(cfg.teachers)}")
    for name in ("teacher_weights", "mimic_weights"):
        per_teacher(cfg, name)


class MRMAE(MAE):
    config_class = MRMAEConfig

    def __init__(self, cfg: MRMAEConfig, image: ImageSpec):
        check_options(cfg)
        super().__init__(cfg, image)
        self.set_teachers([build_teacher(name, weights, cfg.teacher_kwargs, self.student, image)
                           for name, weights in zip(cfg.teachers, per_teacher(cfg, "teacher_weights"))])
        self.mimic_weights = per_teacher(cfg, "mimic_weights")
        self.mimic_heads = nn.ModuleList(xavier_linear(self.student.embed_dim, t.embed_dim) for t in self.teachers)
        self.term_names = [f"mimic_{name}" for name in cfg.teachers]

    def frozen_pass(self, images: torch.Tensor) -> MRMAEFrozen:
        """The mask (from the first teacher's importance in attention mode), then every teacher's last level at
        the CLS and kept rows only."""
        cfg, first = self.cfg, self.teachers[0]
        part = first.begin(images, [first.depth], importance=cfg.mask_mode == "attention")
        mask = draw_mask(cfg.mask_mode, cfg.mask_ratio, images.shape[0], self.student.num_patches, images.device,
                         part.importance)
        rows = ops.cls_and_kept_rows(mask.ids_keep)
        targets = [first.finish(part, rows).levels]
        targets += [t(images, [t.depth], importance=False, rows=rows).levels for t in self.teachers[1:]]
        return MRMAEFrozen(mask, targets)

    def trained_pass(self, images: torch.Tensor, frozen: MRMAEFrozen) -> MethodOutput:
        latent, pixel = self.reconstruct(images, frozen.mask)
        rows = ops.cls_and_kept_rows(frozen.mask.ids_keep)
        terms, total = {"pixel": pixel}, pixel
        for name, head, target, weight in zip(self.term_names, self.mimic_heads, frozen.targets, self.mimic_weights):
            mimic = ops.align_loss(head(latent)[None], target, rows, loss=self.cfg.mimic_loss,
                                   target_norm="layernorm")[0]
            terms[name] = mimic
            total = total + weight * mimic
        return MethodOutput(total, terms, frozen.mask)

    def step_flops(self) -> StepFlops:
        """MAE's, plus each teacher's forward (the first one's importance in attention mode) with its last block
        at the CLS and kept rows, and the mimic heads there."""
        mae = super().step_flops()
        kept = num_kept(self.student.num_patches, self.cfg.mask_ratio)
        teachers = sum(teacher_flops(t, [t.depth], i == 0 and self.cfg.mask_mode == "attention", 1 + kept)
                       for i, t in enumerate(self.teachers))
        heads = sum(2 * (1 + kept) * self.student.embed_dim * t.embed_dim for t in self.teachers)
        return StepFlops(teachers, mae.student_forward, heads, mae.backward + 2 * heads)
