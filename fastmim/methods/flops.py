"""Analytic matmul FLOPs of one training step per image (2 FLOPs per multiply-add), for MFU.

Counted: every matrix product — patch embeddings, qkv/proj/MLP linears, attention's QKᵀ and AV, the teachers'
CLS-row importance, the DA mix, heads and decoders — as fastmim computes them (a teacher's last block at the
rows the method reads only). Elementwise work (norms, softmax, GELU, the losses) is not counted, as usual for
MFU. Backward costs two forward products per product (input and weight gradients), except the student's patch
embedding, which needs only the weight gradient (the images need none).
"""
from __future__ import annotations

from dataclasses import dataclass

from .masks import num_kept, num_masked


@dataclass
class StepFlops:
    teacher_forward: float
    student_forward: float   # the student (and, for MAE, the decoder)
    head_forward: float      # DA mix + heads, or the mimic heads
    backward: float

    @property
    def total(self) -> float:
        return self.teacher_forward + self.student_forward + self.head_forward + self.backward


def block_flops(tokens: int, dim: int, hidden: int) -> float:
    linear = 2 * tokens * dim * (3 * dim + dim) + 2 * tokens * dim * hidden * 2
    attention = 2 * 2 * tokens * tokens * dim
    return linear + attention


def last_block_flops(tokens: int, rows: int, dim: int, hidden: int, output: bool, importance: bool) -> float:
    """The teacher's last block (models/teacher_last_block.py): K over every token, the CLS query and its
    importance row when asked; with an output, V over every token and queries, attention, projection and MLP at
    `rows` rows."""
    keys = 2 * tokens * dim * dim
    cls_row = 2 * dim * dim + 2 * tokens * dim if importance else 0
    if not output:
        return keys + cls_row
    values_queries = 2 * tokens * dim * dim + 2 * rows * dim * dim
    attention = 2 * 2 * rows * tokens * dim
    projection_mlp = 2 * rows * dim * dim + 2 * rows * dim * hidden * 2
    return keys + cls_row + values_queries + attention + projection_mlp


def teacher_flops(teacher, levels: list[int], importance: bool, rows: int | None) -> float:
    """A teacher's forward for the given levels; `rows`: the last level's rows (None: every token)."""
    t = teacher.model
    patches = t.patch_embed.num_patches
    tokens, dim, hidden = teacher.num_prefix + patches, t.embed_dim, t.blocks[0].mlp.fc1.out_features
    total = 2 * patches * t.patch_embed.proj.weight[0].numel() * dim
    if importance or teacher.depth in levels:
        total += (teacher.depth - 1) * block_flops(tokens, dim, hidden)
        return total + last_block_flops(tokens, tokens if rows is None else rows, dim, hidden,
                                        teacher.depth in levels, importance)
    return total + max(levels) * block_flops(tokens, dim, hidden)


def student_flops(student, kept: int, depth: int) -> tuple[float, float]:
    """(patch embedding of the kept patches, `depth` blocks on the CLS and kept tokens)."""
    patch = 2 * kept * student.patch_embed.proj.weight[0].numel() * student.embed_dim
    hidden = student.blocks[0].mlp.fc1.out_features
    return patch, depth * block_flops(1 + kept, student.embed_dim, hidden)


def maskalign_step_flops(method) -> StepFlops:
    cfg, s, teacher = method.cfg, method.student, method.teacher
    kept = num_kept(s.num_patches, cfg.mask_ratio)
    rows = None if cfg.target_norm == "batchnorm" else 1 + kept
    teacher_forward = teacher_flops(teacher, method.levels, cfg.mask_mode == "attention", rows)
    s_patch, s_blocks = student_flops(s, kept, max(method.student_levels))
    t_dim, tokens = teacher.embed_dim, 1 + kept
    levels, sources = len(method.levels), len(method.student_levels)
    mix = 2 * levels * sources * tokens * s.embed_dim
    heads = 2 * levels * tokens * s.embed_dim * t_dim
    if cfg.head in ("mlp", "mlp2"):
        heads = 2 * levels * tokens * (s.embed_dim * s.embed_dim + s.embed_dim * t_dim)
    backward = 2 * (s_blocks + mix + heads) + s_patch
    return StepFlops(teacher_forward, s_patch + s_blocks, mix + heads, backward)


def maskdistill_step_flops(method) -> StepFlops:
    """The student on every token (1 + N: its patch embedding on the kept patches only), the head and the
    teacher's last block at the M masked rows."""
    s, teacher = method.student, method.teacher
    masked = num_masked(s.num_patches, method.cfg.mask_ratio)
    kept = s.num_patches - masked
    s_patch = 2 * kept * s.patch_embed.proj.weight[0].numel() * s.embed_dim
    s_blocks = s.depth * block_flops(1 + s.num_patches, s.embed_dim, s.blocks[0].mlp.fc1.out_features)
    head = 2 * masked * s.embed_dim * teacher.embed_dim
    teacher_forward = teacher_flops(teacher, [teacher.depth], False, masked)
    return StepFlops(teacher_forward, s_patch + s_blocks, head, 2 * (s_blocks + head) + s_patch)


def decoder_flops(decoder, encoder_dim: int, kept: int) -> float:
    """MAE's decoder: the embedding of 1 + V tokens, its blocks on 1 + N tokens, the projection at the M masked
    ones."""
    dim, hidden = decoder.embed.out_features, decoder.blocks[0].mlp.fc1.out_features
    masked = decoder.num_patches - kept
    return (2 * (1 + kept) * encoder_dim * dim + len(decoder.blocks) * block_flops(1 + decoder.num_patches, dim, hidden)
            + 2 * masked * dim * decoder.pred.out_features)


def mae_step_flops(method) -> StepFlops:
    s = method.student
    kept = num_kept(s.num_patches, method.cfg.mask_ratio)
    s_patch, s_blocks = student_flops(s, kept, s.depth)
    decoder = decoder_flops(method.decoder, s.embed_dim, kept)
    return StepFlops(0.0, s_patch + s_blocks + decoder, 0.0, 2 * (s_blocks + decoder) + s_patch)


def mrmae_step_flops(method) -> StepFlops:
    mae = mae_step_flops(method)
    kept = num_kept(method.student.num_patches, method.cfg.mask_ratio)
    teachers = sum(teacher_flops(t, [t.depth], i == 0 and method.cfg.mask_mode == "attention", 1 + kept)
                   for i, t in enumerate(method.teachers))
    heads = sum(2 * (1 + kept) * method.student.embed_dim * t.embed_dim for t in method.teachers)
    return StepFlops(teachers, mae.student_forward, heads, mae.backward + 2 * heads)
