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
from fastmim.models.teacher import Teacher

from .base import MethodOutput
from .configs import MRMAEConfig
from .heads import xavier_linear
from .mae import MAE
from .masks import Mask, draw_mask

LOSSES = ("smooth_l1", "l2", "l1", "cosine")
MRMAE_MASK_MODES = ("random", "attention")  # the paper's two; block masks are MaskDistill's


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
    for name, value, choices in (("mimic_loss", cfg.mimic_loss, LOSSES),
                                 ("mask_mode", cfg.mask_mode, MRMAE_MASK_MODES)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


class MRMAE(MAE):
    name = "mrmae"

    def __init__(self, cfg: MRMAEConfig):
        check_options(cfg)
        super().__init__(cfg)
        grid = self.student.grid
        self.set_teachers([Teacher(name, grid, weights, cfg.data_mean, cfg.data_std, **cfg.teacher_kwargs)
                           for name, weights in zip(cfg.teachers, per_teacher(cfg, "teacher_weights"))])
        self.mimic_weights = per_teacher(cfg, "mimic_weights")
        self.mimic_heads = nn.ModuleList(xavier_linear(self.student.embed_dim, t.embed_dim) for t in self.teachers)
        self.term_names = [f"mimic_{name}" for name in cfg.teachers]

    def frozen_pass(self, images: torch.Tensor) -> MRMAEFrozen:
        """The mask (from the first teacher's importance in attention mode), then every teacher's last level at
        the CLS and kept rows only."""
        cfg, first = self.cfg, self.teachers[0]

        def draw(importance):
            return draw_mask(cfg.mask_mode, cfg.mask_ratio, images.shape[0], self.student.num_patches, images.device,
                             importance)

        rows_of = lambda mask: ops.cls_and_kept_rows(mask.ids_keep)  # noqa: E731
        out = first(images, [first.depth], importance=cfg.mask_mode == "attention", draw=draw, rows_of=rows_of)
        mask, targets = out.mask, [out.levels]
        for teacher in self.teachers[1:]:
            targets.append(teacher(images, [teacher.depth], importance=False, draw=lambda _: mask,
                                   rows_of=rows_of).levels)
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

    def flops_per_image(self) -> float:
        from .flops import mrmae_step_flops

        return mrmae_step_flops(self).total
