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
from .pictures import PictureData, patch_map, per_image, row_cosine


@dataclass
class MRMAEFrozen:
    mask: Mask
    targets: list[torch.Tensor]  # per teacher, its last level [1, B, 1+N, Dt] (computed at CLS + kept rows)
    importance: torch.Tensor | None = None  # [B, N]: the first teacher's, in attention mode


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

    def frozen_pass(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MRMAEFrozen:
        """The mask (from the first teacher's importance in attention mode; drawn from `generator`, None: the
        device's default), then every teacher's last level at the CLS and kept rows only."""
        cfg, first = self.cfg, self.teachers[0]
        part = first.begin(images, [first.depth], importance=cfg.mask_mode == "attention")
        mask = draw_mask(cfg.mask_mode, cfg.mask_ratio, images.shape[0], self.student.num_patches, images.device,
                         part.importance, generator)
        rows = ops.cls_and_kept_rows(mask.ids_keep)
        targets = [first.finish(part, rows).levels]
        targets += [t(images, [t.depth], importance=False, rows=rows).levels for t in self.teachers[1:]]
        return MRMAEFrozen(mask, targets, part.importance)

    def mimic_loss(self, pred: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One teacher's mimic loss: its head's output [1, B, R, Dt] against its target rows `rows` [B, R]."""
        return ops.align_loss(pred, target, rows, loss=self.cfg.mimic_loss, target_norm="layernorm")[0]

    def trained_pass(self, images: torch.Tensor, frozen: MRMAEFrozen) -> MethodOutput:
        latent, pixel = self.reconstruct(images, frozen.mask)
        rows = ops.cls_and_kept_rows(frozen.mask.ids_keep)
        terms, total = {"pixel": pixel}, pixel
        for name, head, target, weight in zip(self.term_names, self.mimic_heads, frozen.targets, self.mimic_weights):
            mimic = self.mimic_loss(head(latent)[None], target, rows)
            terms[name] = mimic
            total = total + weight * mimic
        return MethodOutput(total, terms, frozen.mask)

    def picture(self, images: torch.Tensor, generator: torch.Generator) -> PictureData:
        """MAE's picture (the mask, the reconstruction), the first teacher's importance in attention mode, each
        image's total loss, and the cosine similarity of the first teacher's mimic head with its target at the
        kept patches."""
        frozen = self.frozen_pass(images, generator)
        mask = frozen.mask
        latent, pred = self.decode(images, mask)
        rows = ops.cls_and_kept_rows(mask.ids_keep)
        mimics = [head(latent)[None] for head in self.mimic_heads]

        def loss_of(b):
            total = self.pixel_loss(pred[b], images[b], mask.ids_masked[b])
            for mimic, target, weight in zip(mimics, frozen.targets, self.mimic_weights):
                total = total + weight * self.mimic_loss(mimic[:, b], target[:, b], rows[b])
            return total

        similarity = patch_map(row_cosine(mimics[0][0], frozen.targets[0][0], rows, "layernorm"), rows,
                               self.student.num_patches)
        return PictureData(mask, per_image(loss_of, images.shape[0]), frozen.importance,
                           self.reconstructed_pixels(pred, images, mask), similarity,
                           f"last level of {self.cfg.teachers[0]}")

    def step_flops(self) -> StepFlops:
        """MAE's, plus each teacher's forward (the first one's importance in attention mode) with its last block
        at the CLS and kept rows, and the mimic heads there."""
        mae = super().step_flops()
        kept = num_kept(self.student.num_patches, self.cfg.mask_ratio)
        teachers = sum(teacher_flops(t, [t.depth], i == 0 and self.cfg.mask_mode == "attention", 1 + kept)
                       for i, t in enumerate(self.teachers))
        heads = sum(2 * (1 + kept) * self.student.embed_dim * t.embed_dim for t in self.teachers)
        return StepFlops(teachers, mae.student_forward, heads, mae.backward + 2 * heads)
