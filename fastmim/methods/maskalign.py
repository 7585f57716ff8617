"""MaskAlign ("Stare at What You See", CVPR 2023): the student sees the CLS token and ~30 % of the patches;
through Dynamic Alignment and per-level heads its features at those tokens are aligned to a frozen teacher's
features of the same tokens on the full image. No mask tokens, no decoder, no reconstruction."""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from fastmim import ops
from fastmim.models.teacher import Teacher, TeacherOutput
from fastmim.models.vit import VisionTransformer, vit_model

from .base import Method, MethodOutput
from .configs import MaskAlignConfig
from .heads import initial_mix, make_head
from .level_weights import level_weights
from .masks import MASK_MODES, Mask, draw_mask, num_kept
from .targets import TARGET_NORMS, batchnorm_targets

LOSSES = ("smooth_l1", "l2", "l1", "cosine")


def check_options(cfg: MaskAlignConfig) -> None:
    for name, value, choices in (("loss", cfg.loss, LOSSES), ("target_norm", cfg.target_norm, TARGET_NORMS),
                                 ("mask_mode", cfg.mask_mode, MASK_MODES)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    num_kept(1, cfg.mask_ratio)  # validates the ratio


def build_student(cfg) -> VisionTransformer:
    student = vit_model(cfg.student, img_size=cfg.img_size, patch_size=cfg.patch_size, drop_path=cfg.drop_path,
                        **cfg.student_kwargs)
    student.set_attention_backend(cfg.attn_backend, "cpu")  # checks the backend before any work
    return student


class MaskAlign(Method):
    name = "maskalign"

    def __init__(self, cfg: MaskAlignConfig, teacher: Teacher | None = None):
        super().__init__()
        check_options(cfg)
        self.cfg = cfg
        self.student: VisionTransformer = build_student(cfg)
        teacher = teacher or Teacher(cfg.teacher, self.student.grid, cfg.teacher_weights,
                                     cfg.data_mean, cfg.data_std, **cfg.teacher_kwargs)
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
        rows = torch.tensor([l - 1 for l in self.levels], device=self.mix.device)
        return self.mix.index_select(0, rows)

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

    def frozen_pass(self, images: torch.Tensor) -> TeacherOutput:
        """The supervised teacher levels and the mask, drawn inside the teacher's forward (from its importance in
        attention mode) so that its last block runs at the CLS and kept rows only — except for batchnorm
        targets, whose statistics cover every row."""
        cfg = self.cfg
        draw = functools.partial(draw_mask, cfg.mask_mode, cfg.mask_ratio, images.shape[0],
                                 self.student.num_patches, images.device)
        rows_of = None if cfg.target_norm == "batchnorm" else (lambda mask: ops.cls_and_kept_rows(mask.ids_keep))
        return self.teacher(images, self.levels, importance=cfg.mask_mode == "attention", draw=draw,
                            rows_of=rows_of)

    def trained_pass(self, images: torch.Tensor, frozen: TeacherOutput) -> MethodOutput:
        """The student on the kept patches, DA + heads, the loss."""
        mask: Mask = frozen.mask
        hidden = self.student(images, mask.ids_keep, depth=max(self.student_levels))
        pred = self.predict(hidden)
        target, row_norm = self.targets(frozen.levels)
        per_level = ops.align_loss(pred, target, ops.cls_and_kept_rows(mask.ids_keep), loss=self.cfg.loss,
                                   target_norm=row_norm)
        if self.cfg.loss == "smooth_l1":
            per_level = per_level * 2  # as the official code
        terms = {f"level_{level}": value for level, value in zip(self.levels, per_level)}
        return MethodOutput((per_level * self.level_weight).sum(), terms, mask, {"level_losses": per_level})

    # --- optimisation ---------------------------------------------------------------------------------
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """None on biases, norms, position embedding, CLS token and DA weights."""
        return super().no_weight_decay(name, param) or name in ("mix", "student.cls_token", "student.pos_embed")

    def flops_per_image(self) -> float:
        from .flops import maskalign_step_flops

        return maskalign_step_flops(self).total
