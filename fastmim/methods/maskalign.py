"""MaskAlign ("Stare at What You See", CVPR 2023): the student sees the CLS token and ~30 % of the patches;
through Dynamic Alignment and per-level heads its features at those tokens are aligned to a frozen teacher's
features of the same tokens on the full image. No mask tokens, no decoder, no reconstruction."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fastmim import ops
from fastmim.data_config import ImageSpec
from fastmim.models.teacher import Teacher
from fastmim.models.vit import VisionTransformer

from .base import Method, MethodOutput
from .configs import MaskAlignConfig
from .flops import StepFlops, student_flops, teacher_flops
from .heads import initial_mix, make_head
from .level_weights import level_weights
from .masks import Mask, draw_mask, num_kept
from .pictures import PictureData, patch_map, per_image, row_cosine
from .builders import build_student, build_teacher
from .targets import batchnorm_targets


@dataclass
class MaskAlignFrozen:
    mask: Mask
    levels: torch.Tensor                # [L, B, 1+N, Dt]: the supervised teacher levels
    importance: torch.Tensor | None     # [B, N] in attention mode


class MaskAlign(Method):
    config_class = MaskAlignConfig

    def __init__(self, cfg: MaskAlignConfig, image: ImageSpec, teacher: Teacher | None = None):
        super().__init__(cfg, image)
        num_kept(1, cfg.mask_ratio)  # validates the ratio
        self.student: VisionTransformer = build_student(cfg, image)
        teacher = teacher or build_teacher(cfg.teacher, cfg.teacher_weights, cfg.teacher_kwargs, self.student, image)
        self.set_teachers([teacher])
        self.weights_by_level = level_weights(cfg.level_weights, teacher.depth)
        self.levels = sorted(self.weights_by_level)
        self.register_buffer("level_weight", torch.tensor([self.weights_by_level[l] for l in self.levels]),
                             persistent=False)
        self._build_alignment(teacher.depth, teacher.embed_dim)
        self._freeze_unused_student_parts()

    @property
    def teacher(self) -> Teacher:
        return self.teachers[0]

    # --- construction -------------------------------------------------------------------------------
    def _build_alignment(self, teacher_depth: int, teacher_dim: int) -> None:
        student_depth, dim = self.student.depth, self.student.embed_dim
        mix = initial_mix(self.cfg.fusion, teacher_depth, student_depth)
        if mix is None:  # simple: level l reads student level l, no learnable mixing
            too_deep = [l for l in self.levels if l > student_depth]
            if too_deep:
                raise ValueError(f"fusion 'simple' cannot supervise teacher levels {too_deep} with a student of "
                                 f"depth {student_depth}; use fusion 'sum'")
            self.student_levels = self.levels
            self.mix = None
            self.register_buffer("fixed_mix", torch.eye(len(self.levels)), persistent=False)
        else:
            self.student_levels = list(range(1, student_depth + 1))
            self.mix = nn.Parameter(mix)
            # The supervised levels' DA rows, made once: built from a Python list in the step, they were a copy
            # from pageable host memory, which waits for the GPU's stream every step (tests/fake_cuda found it).
            self.register_buffer("mix_rows", torch.tensor([l - 1 for l in self.levels]), persistent=False)
        count = len(self.levels)
        if self.cfg.head == "linear":
            # stacked so that one batched GEMM computes every head (fastmim.ops.dynamic_align)
            weight = torch.empty(count, teacher_dim, dim)
            for level_weight in weight:
                nn.init.xavier_uniform_(level_weight)
            self.head_weight = nn.Parameter(weight)
            self.head_bias = nn.Parameter(torch.zeros(count, teacher_dim))
        else:
            self.heads = nn.ModuleList(make_head(self.cfg.head, dim, teacher_dim) for _ in self.levels)

    def _freeze_unused_student_parts(self) -> None:
        """Parameters that never get a gradient would stall DDP without find_unused_parameters: the final norm
        (levels are taken before it) and blocks deeper than the deepest level read."""
        self.student.norm.requires_grad_(False)
        for block in self.student.blocks[max(self.student_levels):]:
            block.requires_grad_(False)

    # --- the objective ------------------------------------------------------------------------------
    def mixing_matrix(self) -> torch.Tensor:
        """[L, S]: the DA rows of the supervised levels only."""
        if self.mix is None:
            return self.fixed_mix
        return self.mix.index_select(0, self.mix_rows)

    def predict(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Student levels → predictions of the supervised teacher levels [L, B, 1+K, Dt]."""
        stacked = torch.stack([hidden[l - 1] for l in self.student_levels])
        mix = self.mixing_matrix()
        if self.cfg.head == "linear":
            return ops.dynamic_align(stacked, mix, self.head_weight, self.head_bias)
        mixed = ops.dynamic_align(stacked, mix)
        return torch.stack([head(level) for head, level in zip(self.heads, mixed)])

    def targets(self, teacher_levels: torch.Tensor) -> tuple[torch.Tensor, str]:
        """The teacher tensor and the per-row norm align_loss applies after gathering the kept rows."""
        if self.cfg.target_norm == "batchnorm":
            return batchnorm_targets(teacher_levels), "none"
        return teacher_levels, self.cfg.target_norm

    def frozen_pass(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MaskAlignFrozen:
        """The mask (from the teacher's importance in attention mode; drawn from `generator`, None: the device's
        default), then the supervised teacher levels, the last one at the CLS and kept rows only — except for
        batchnorm targets, whose statistics cover every row."""
        cfg = self.cfg
        part = self.teacher.begin(images, self.levels, importance=cfg.mask_mode == "attention")
        mask = draw_mask(cfg.mask_mode, cfg.mask_ratio, images.shape[0], self.student.num_patches, images.device,
                         part.importance, generator)
        rows = None if cfg.target_norm == "batchnorm" else ops.cls_and_kept_rows(mask.ids_keep)
        out = self.teacher.finish(part, rows)
        return MaskAlignFrozen(mask, out.levels, out.importance)

    def trained_pass(self, images: torch.Tensor, frozen: MaskAlignFrozen) -> MethodOutput:
        """The student on the kept patches, DA + heads, the loss."""
        mask: Mask = frozen.mask
        hidden = self.student(images, mask.ids_keep, depth=max(self.student_levels))
        pred = self.predict(hidden)
        target, row_norm = self.targets(frozen.levels)
        per_level = self.level_losses(pred, target, row_norm, ops.cls_and_kept_rows(mask.ids_keep))
        terms = {f"level_{level}": value for level, value in zip(self.levels, per_level)}
        return MethodOutput((per_level * self.level_weight).sum(), terms, mask, {"level_losses": per_level})

    def level_losses(self, pred: torch.Tensor, target: torch.Tensor, row_norm: str, rows: torch.Tensor):
        """[L]: the loss of each supervised level (pred [L, B, R, Dt] against the target rows `rows` [B, R])."""
        per_level = ops.align_loss(pred, target, rows, loss=self.cfg.loss, target_norm=row_norm)
        if self.cfg.loss == "smooth_l1":
            per_level = per_level * 2  # as the official code
        return per_level

    def picture(self, images: torch.Tensor, generator: torch.Generator) -> PictureData:
        """The mask (with the teacher's importance in attention mode), each image's loss, and the cosine similarity
        of the deepest supervised level's prediction with its target at the kept patches."""
        frozen = self.frozen_pass(images, generator)
        mask = frozen.mask
        pred = self.predict(self.student(images, mask.ids_keep, depth=max(self.student_levels)))
        target, row_norm = self.targets(frozen.levels)
        rows = ops.cls_and_kept_rows(mask.ids_keep)
        loss = per_image(lambda b: (self.level_losses(pred[:, b], target[:, b], row_norm, rows[b])
                                    * self.level_weight).sum(), images.shape[0])
        similarity = patch_map(row_cosine(pred[-1], target[-1], rows, row_norm), rows, self.student.num_patches)
        return PictureData(mask, loss, frozen.importance, similarity=similarity,
                           similarity_of=f"teacher level {self.levels[-1]} of {self.teacher.depth}")

    # --- optimisation ---------------------------------------------------------------------------------
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """None on biases, norms, position embedding, CLS token and DA weights."""
        return super().no_weight_decay(name, param) or name in ("mix", "student.cls_token", "student.pos_embed")

    def step_flops(self) -> StepFlops:
        cfg, s, teacher = self.cfg, self.student, self.teacher
        kept = num_kept(s.num_patches, cfg.mask_ratio)
        rows = None if cfg.target_norm == "batchnorm" else 1 + kept
        teacher_forward = teacher_flops(teacher, self.levels, cfg.mask_mode == "attention", rows)
        s_patch, s_blocks = student_flops(s, kept, max(self.student_levels))
        t_dim, tokens = teacher.embed_dim, 1 + kept
        levels, sources = len(self.levels), len(self.student_levels)
        mix = 2 * levels * sources * tokens * s.embed_dim
        heads = 2 * levels * tokens * s.embed_dim * t_dim
        if cfg.head in ("mlp", "mlp2"):
            heads = 2 * levels * tokens * (s.embed_dim * s.embed_dim + s.embed_dim * t_dim)
        backward = 2 * (s_blocks + mix + heads) + s_patch
        return StepFlops(teacher_forward, s_patch + s_blocks, mix + heads, backward)
