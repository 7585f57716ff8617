"""Analytic matmul FLOPs of one training step per image (2 FLOPs per multiply-add), for MFU: the counting
helpers each method's `step_flops` composes.

Counted: every matrix product — patch embeddings, qkv/proj/MLP linears, attention's QKᵀ and AV, the teachers'
CLS-row importance, the DA mix, heads and decoders — as fastmim computes them (a teacher's last block at the
rows the method reads only). Elementwise work (norms, softmax, GELU, the losses) is not counted, as usual for
MFU. Backward costs two forward products per product (input and weight gradients), except the student's patch
embedding, which needs only the weight gradient (the images need none).
"""
from __future__ import annotations

from dataclasses import dataclass

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


def decoder_flops(decoder, encoder_dim: int, kept: int) -> float:
    """MAE's decoder: the embedding of 1 + V tokens, its blocks on 1 + N tokens, the projection at the M masked
    ones."""
    dim, hidden = decoder.embed.out_features, decoder.blocks[0].mlp.fc1.out_features
    masked = decoder.num_patches - kept
    return (2 * (1 + kept) * encoder_dim * dim + len(decoder.blocks) * block_flops(1 + decoder.num_patches, dim, hidden)
            + 2 * masked * dim * decoder.pred.out_features)
