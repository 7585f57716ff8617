"""MaskDistill ("A Unified View of Masked Image Modeling", interpretation: there is no official code). The
student sees a corrupted image — BEiT v2's block masks (40 %), the masked patches replaced by a learned mask
token — with all its tokens; one linear head on its final-norm outputs at the masked positions predicts a frozen
teacher's last-block features there (CLIP ViT-B/16 by default), LayerNorm-normalized per row without affine;
the loss is smooth-L1 (beta 1, no ×2) averaged over the masked tokens and channels. The teacher's last block
runs on the masked rows only."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmim import ops
from fastmim.models.teacher import Teacher
from fastmim.models.vit import VisionTransformer, vit_model

from .base import Method, MethodOutput
from .configs import MaskDistillConfig
from .heads import xavier_linear
from .masks import Mask, block_mask, num_masked

LOSSES = ("smooth_l1", "l2", "l1", "cosine")


@dataclass
class MaskDistillFrozen:
    mask: Mask
    target: torch.Tensor  # [1, B, 1+N, Dt]: the teacher's last level, computed at the masked rows


def masked_rows(mask: Mask) -> torch.Tensor:
    """The masked patches' rows in a CLS-first level: 1 + ids_masked."""
    return mask.ids_masked + 1


class MaskDistill(Method):
    name = "maskdistill"

    def __init__(self, cfg: MaskDistillConfig):
        super().__init__()
        if cfg.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {cfg.loss!r}")
        if cfg.beta < 0:
            raise ValueError(f"beta must be non-negative, got {cfg.beta}")
        self.cfg = cfg
        self.student: VisionTransformer = vit_model(
            cfg.student, img_size=cfg.img_size, patch_size=cfg.patch_size, drop_path=cfg.drop_path,
            init_values=cfg.init_values or None, mask_token=True, **cfg.student_kwargs)
        self.student.set_attention_backend(cfg.attn_backend, "cpu")
        num_masked(self.student.num_patches, cfg.mask_ratio)  # validates the ratio
        teacher = Teacher(cfg.teacher, self.student.grid, cfg.teacher_weights, cfg.data_mean, cfg.data_std,
                          **cfg.teacher_kwargs)
        self.set_teachers([teacher])
        self.head = xavier_linear(self.student.embed_dim, teacher.embed_dim)

    @property
    def teacher(self) -> Teacher:
        return self.teachers[0]

    def frozen_pass(self, images: torch.Tensor) -> MaskDistillFrozen:
        s = self.student
        mask = block_mask(images.shape[0], s.grid, s.grid, self.cfg.mask_ratio, images.device)
        out = self.teacher(images, [self.teacher.depth], importance=False, draw=lambda _: mask, rows_of=masked_rows)
        return MaskDistillFrozen(mask, out.levels)

    def trained_pass(self, images: torch.Tensor, frozen: MaskDistillFrozen) -> MethodOutput:
        rows = masked_rows(frozen.mask)
        x = self.student.encode_dense(images, frozen.mask.ids_keep)
        at_masked = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))  # the head runs there only
        distill = ops.align_loss(self.head(at_masked)[None], frozen.target, rows, loss=self.cfg.loss,
                                 target_norm="layernorm", beta=self.cfg.beta)[0]
        return MethodOutput(distill, {"distill": distill}, frozen.mask)

    def no_weight_decay(self, name: str, param) -> bool:
        """BEiT v2's: none on biases, 1-D tensors (norms, layer scale) and the CLS token."""
        return super().no_weight_decay(name, param) or name == "student.cls_token"

    def flops_per_image(self) -> float:
        from .flops import maskdistill_step_flops

        return maskdistill_step_flops(self).total
