"""Analytic matmul FLOPs of one MaskAlign training step per image (2 FLOPs per multiply-add), for MFU.

Counted: every matrix product — patch embeddings, qkv/proj/MLP linears, attention's QKᵀ and AV, the teacher's
CLS-row importance, the DA mix and the heads — as fastmim computes them (the teacher's last block on the kept
rows only). Elementwise work (norms, softmax, GELU, the loss) is not counted, as usual for MFU. Backward costs
two forward products per product (input and weight gradients), except the student's patch embedding, which
needs only the weight gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

from .maskalign import MaskAlign
from .masking import num_kept


@dataclass
class StepFlops:
    teacher_forward: float
    student_forward: float
    align_forward: float   # DA mix + heads
    backward: float

    @property
    def total(self) -> float:
        return self.teacher_forward + self.student_forward + self.align_forward + self.backward


def block_flops(tokens: int, dim: int, hidden: int) -> float:
    linear = 2 * tokens * dim * (3 * dim + dim) + 2 * tokens * dim * hidden * 2
    attention = 2 * 2 * tokens * tokens * dim
    return linear + attention


def last_block_flops(tokens: int, rows: int, dim: int, hidden: int, output: bool, importance: bool) -> float:
    """The teacher's last block (models/teacher_last_block.py): K (and V) over every token, the CLS query and
    its importance row; with an output, queries, attention, projection and MLP on `rows` rows."""
    cls_row = 2 * dim * dim + (2 * tokens * dim if importance else 0)
    if not output:
        return 2 * tokens * dim * dim + cls_row
    keys_values = 2 * tokens * dim * 2 * dim
    queries = 2 * (rows - 1) * dim * dim
    attention = 2 * 2 * rows * tokens * dim
    projection_mlp = 2 * rows * dim * dim + 2 * rows * dim * hidden * 2
    return cls_row + keys_values + queries + attention + projection_mlp


def maskalign_step_flops(method: MaskAlign) -> StepFlops:
    s, t = method.student, method.teacher.model
    cfg = method.cfg
    patches = s.num_patches
    kept = num_kept(patches, cfg.mask_ratio)

    t_dim, t_hidden = t.embed_dim, t.blocks[0].mlp.fc1.out_features
    t_tokens = method.teacher.num_prefix + patches
    t_depth = method.teacher.depth
    t_patch = 2 * patches * t.patch_embed.proj.weight[0].numel() * t_dim
    importance = cfg.mask_mode == "attention"
    teacher = t_patch
    if importance or t_depth in method.levels:
        rows = t_tokens if cfg.target_norm == "batchnorm" else 1 + kept
        output = t_depth in method.levels
        teacher += (t_depth - 1) * block_flops(t_tokens, t_dim, t_hidden)
        teacher += last_block_flops(t_tokens, rows, t_dim, t_hidden, output, importance)
    else:
        teacher += max(method.levels) * block_flops(t_tokens, t_dim, t_hidden)

    s_dim, s_hidden = s.embed_dim, s.blocks[0].mlp.fc1.out_features
    s_tokens = 1 + kept
    s_patch = 2 * kept * s.patch_embed.proj.weight[0].numel() * s_dim
    s_blocks = max(method.student_levels) * block_flops(s_tokens, s_dim, s_hidden)

    levels, sources = len(method.levels), len(method.student_levels)
    mix = 2 * levels * sources * s_tokens * s_dim
    heads = 2 * levels * s_tokens * s_dim * t_dim if cfg.head in ("linear", "norm_linear") else 0
    if cfg.head in ("mlp", "mlp2"):
        heads = 2 * levels * s_tokens * (s_dim * t_dim + t_dim * t_dim)
    backward = 2 * (s_blocks + mix + heads) + s_patch
    return StepFlops(teacher, s_patch + s_blocks, mix + heads, backward)
