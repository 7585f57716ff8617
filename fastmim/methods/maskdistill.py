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
from fastmim.data_config import ImageSpec
from fastmim.models.teacher import Teacher
from fastmim.models.vit import VisionTransformer

from .base import Method, MethodOutput
from .builders import build_student, build_teacher
from .configs import MaskDistillConfig
from .flops import StepFlops, block_flops, student_flops, teacher_flops
from .heads import xavier_linear
from .masks import Mask, block_mask, num_masked
from .pictures import PictureData, patch_map, per_image, row_cosine


@dataclass
class MaskDistillFrozen:
    mask: Mask
    target: torch.Tensor  # [1, B, 1+N, Dt]: the teacher's last level, computed at the masked rows


def masked_rows(mask: Mask) -> torch.Tensor:
    """The masked patches' rows in a CLS-first level: 1 + ids_masked."""
    return mask.ids_masked + 1


class MaskDistill(Method):
    config_class = MaskDistillConfig

    def __init__(self, cfg: MaskDistillConfig, image: ImageSpec):
        super().__init__(cfg, image)
        if cfg.beta < 0:
            raise ValueError(f"beta must be non-negative, got {cfg.beta}")
        self.student: VisionTransformer = build_student(cfg, image, init_values=cfg.init_values or None,
                                                        mask_token=True)
        num_masked(self.student.num_patches, cfg.mask_ratio)  # validates the ratio
        teacher = build_teacher(cfg.teacher, cfg.teacher_weights, cfg.teacher_kwargs, self.student, image)
        self.set_teachers([teacher])
        self.head = xavier_linear(self.student.embed_dim, teacher.embed_dim)

    @property
    def teacher(self) -> Teacher:
        return self.teachers[0]

    def frozen_pass(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MaskDistillFrozen:
        """The block mask, drawn from `generator` (None: the device's default), then the teacher's last level at
        the masked rows."""
        s = self.student
        mask = block_mask(images.shape[0], s.grid, s.grid, self.cfg.mask_ratio, images.device, generator)
        target = self.teacher(images, [self.teacher.depth], importance=False, rows=masked_rows(mask)).levels
        return MaskDistillFrozen(mask, target)

    def predict(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """[1, B, M, Dt]: the head on the dense student's outputs at the masked positions."""
        rows = masked_rows(mask)
        x = self.student.encode_dense(images, mask.ids_keep)
        at_masked = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))  # the head runs there only
        return self.head(at_masked)[None]

    def distill_loss(self, pred: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return ops.align_loss(pred, target, rows, loss=self.cfg.loss, target_norm="layernorm", beta=self.cfg.beta)[0]

    def trained_pass(self, images: torch.Tensor, frozen: MaskDistillFrozen) -> MethodOutput:
        distill = self.distill_loss(self.predict(images, frozen.mask), frozen.target, masked_rows(frozen.mask))
        return MethodOutput(distill, {"distill": distill}, frozen.mask)

    def picture(self, images: torch.Tensor, generator: torch.Generator) -> PictureData:
        """The block mask, each image's loss, and the cosine similarity of the prediction with the teacher's last
        level at the masked patches."""
        frozen = self.frozen_pass(images, generator)
        rows = masked_rows(frozen.mask)
        pred = self.predict(images, frozen.mask)
        loss = per_image(lambda b: self.distill_loss(pred[:, b], frozen.target[:, b], rows[b]), images.shape[0])
        similarity = patch_map(row_cosine(pred[0], frozen.target[0], rows, "layernorm"), rows,
                               self.student.num_patches)
        return PictureData(frozen.mask, loss, similarity=similarity,
                           similarity_of=f"teacher level {self.teacher.depth} of {self.teacher.depth}")

    def no_weight_decay(self, name: str, param) -> bool:
        """BEiT v2's: none on biases, 1-D tensors (norms, layer scale) and the CLS token."""
        return super().no_weight_decay(name, param) or name == "student.cls_token"

    def step_flops(self) -> StepFlops:
        """The student on every token (1 + N: its patch embedding on the kept patches only), the head and the
        teacher's last block at the M masked rows."""
        s, teacher = self.student, self.teacher
        masked = num_masked(s.num_patches, self.cfg.mask_ratio)
        s_patch, _ = student_flops(s, s.num_patches - masked, 0)
        s_blocks = s.depth * block_flops(1 + s.num_patches, s.embed_dim, s.blocks[0].mlp.fc1.out_features)
        head = 2 * masked * s.embed_dim * teacher.embed_dim
        teacher_forward = teacher_flops(teacher, [teacher.depth], False, masked)
        return StepFlops(teacher_forward, s_patch + s_blocks, head, 2 * (s_blocks + head) + s_patch)
