"""MaskAlign (DESIGN §1): the student sees the CLS token and ~30 % of the patches; through Dynamic Alignment
and per-level heads its features at those tokens are aligned to a frozen teacher's features of the same
tokens on the full image. No mask tokens, no decoder, no reconstruction."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from fastmim import ops
from fastmim.models.teacher import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherOutput
from fastmim.models.vit import VisionTransformer, vit_model

from .heads import initial_mix, make_head
from .level_weights import level_weights
from .masking import keep_indices, num_kept
from .targets import TARGET_NORMS, batchnorm_targets

LOSSES = ("smooth_l1", "l2", "l1", "cosine")


@dataclass
class MaskAlignConfig:
    student: str = "base"                  # tiny/small/base/large/huge
    student_kwargs: dict = field(default_factory=dict)  # overrides (embed_dim, depth, num_heads, …)
    img_size: int = 224
    patch_size: int = 16
    drop_path: float = 0.1
    attn_backend: str = "auto"             # auto/sdpa/flash/xformers/math
    teacher: str = "clip_b16"              # clip_b16/clip_l14/dino_b16 or any timm ViT name
    teacher_weights: str = "hub"           # hub (timm download), random, or a local file
    teacher_kwargs: dict = field(default_factory=dict)
    mask_ratio: float = 0.7
    mask_mode: str = "attention"           # attention/random
    fusion: str = "linear"                 # linear/sum/simple
    head: str = "linear"                   # linear/norm_linear/mlp/mlp2
    target_norm: str = "layernorm"         # layernorm/l2/batchnorm/none
    loss: str = "smooth_l1"                # smooth_l1/l2/l1/cosine
    level_weights: str = "top5"            # mean/out/linear_decay/topK/midK
    data_mean: tuple = IMAGENET_MEAN
    data_std: tuple = IMAGENET_STD


@dataclass
class MaskAlignOutput:
    loss: torch.Tensor             # scalar: Σ_l weight_l · loss_l
    level_losses: torch.Tensor     # [L] float32, one per supervised level
    levels: list[int]              # the supervised teacher levels (1-based)
    ids_keep: torch.Tensor         # [B, V]


def check_options(cfg: MaskAlignConfig) -> None:
    for name, value, choices in (("loss", cfg.loss, LOSSES), ("target_norm", cfg.target_norm, TARGET_NORMS),
                                 ("mask_mode", cfg.mask_mode, ("random", "attention"))):
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    num_kept(1, cfg.mask_ratio)  # validates the ratio


class MaskAlign(nn.Module):
    def __init__(self, cfg: MaskAlignConfig, teacher: Teacher | None = None):
        super().__init__()
        check_options(cfg)
        self.cfg = cfg
        self.student: VisionTransformer = vit_model(
            cfg.student, img_size=cfg.img_size, patch_size=cfg.patch_size, drop_path=cfg.drop_path,
            **cfg.student_kwargs)
        self.student.set_attention_backend(cfg.attn_backend, "cpu")
        teacher = teacher or Teacher(cfg.teacher, self.student.grid, cfg.teacher_weights,
                                     cfg.data_mean, cfg.data_std, **cfg.teacher_kwargs)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: never trained, saved or synced by DDP
        self.weights_by_level = level_weights(cfg.level_weights, teacher.depth)
        self.levels = sorted(self.weights_by_level)
        self.register_buffer("level_weight", torch.tensor([self.weights_by_level[l] for l in self.levels]),
                             persistent=False)
        self._build_alignment(teacher.depth, teacher.embed_dim)
        self._freeze_unused_student_parts()

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

    def _apply(self, fn, recurse=True):
        self.teacher._apply(fn)  # .to()/.cuda() move the unregistered teacher too
        return super()._apply(fn, recurse)

    def set_attention_backend(self, name: str, device) -> str:
        return self.student.set_attention_backend(name, device)

    def compile_blocks(self) -> None:
        """torch.compile every student block and every teacher block but the last (which is written out to
        return the CLS-row importance): fuses the norms, activations and residual adds around the GEMMs.
        Identical blocks share one compiled graph, so compiling costs seconds, not minutes."""
        for block in [*self.student.blocks, *self.teacher.model.blocks[:-1]]:
            block.compile()

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

    def forward(self, images: torch.Tensor) -> MaskAlignOutput:
        return self.student_loss(images, self.teacher_targets(images))

    def teacher_targets(self, images: torch.Tensor) -> TeacherOutput:
        """The frozen half of the step: the supervised teacher levels and the mask, drawn inside the teacher's
        forward (from its importance in attention mode) so that its last block runs on the kept rows only —
        except for batchnorm targets, whose statistics cover every row."""
        cfg = self.cfg
        keep = functools.partial(keep_indices, cfg.mask_mode, cfg.mask_ratio, images.shape[0],
                                 self.student.num_patches, images.device)
        return self.teacher(images, self.levels, importance=cfg.mask_mode == "attention", keep=keep,
                            all_rows=cfg.target_norm == "batchnorm")

    def student_loss(self, images: torch.Tensor, teacher_out: TeacherOutput) -> MaskAlignOutput:
        """The trained half: the student on the kept patches, DA + heads, the loss."""
        ids_keep = teacher_out.ids_keep
        hidden = self.student(images, ids_keep, depth=max(self.student_levels))
        pred = self.predict(hidden)
        target, row_norm = self.targets(teacher_out.levels)
        per_level = ops.align_loss(pred, target, ids_keep, loss=self.cfg.loss, target_norm=row_norm)
        if self.cfg.loss == "smooth_l1":
            per_level = per_level * 2  # as the official code
        return MaskAlignOutput((per_level * self.level_weight).sum(), per_level, self.levels, ids_keep)

    # --- optimisation ---------------------------------------------------------------------------------
    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices only: none on biases, norms, position embedding, CLS token, DA weights."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            skip = param.ndim <= 1 or name in ("mix", "student.cls_token", "student.pos_embed") or name.endswith("bias")
            (no_decay if skip else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
