"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners"), exactly as facebookresearch/mae's
models_mae.py computes it: a random 75 % of the patches masked; the encoder (the student, on the CLS token and
the kept patches, then its final norm); the decoder (models/decoder.py); the mean squared error against the
normalized pixels of the masked patches (ops.masked_pixel_loss, read straight from the image)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmim import ops
from fastmim.data_config import ImageSpec
from fastmim.models.decoder import MAEDecoder
from fastmim.models.vit import VisionTransformer

from .base import Method, MethodOutput
from .builders import build_student
from .configs import MAEConfig
from .flops import StepFlops, decoder_flops, student_flops
from .masks import Mask, num_kept, random_mask


@dataclass
class MAEFrozen:
    mask: Mask


class MAE(Method):
    config_class = MAEConfig

    def __init__(self, cfg: MAEConfig, image: ImageSpec):
        super().__init__(cfg, image)
        num_kept(1, cfg.mask_ratio)  # validates the ratio
        self.student: VisionTransformer = build_student(cfg, image)
        s = self.student
        self.decoder = MAEDecoder(s.grid, s.embed_dim, s.patch_size * s.patch_size * s.in_chans, cfg.decoder_dim,
                                  cfg.decoder_depth, cfg.decoder_heads)
        self.decoder.set_attention_backend(cfg.attn_backend, "cpu")

    def set_attention_backend(self, name: str, device) -> str:
        self.decoder.set_attention_backend(name, device)
        return super().set_attention_backend(name, device)

    def trained_blocks(self) -> list:
        return [*self.student.blocks, *self.decoder.blocks]

    def frozen_pass(self, images: torch.Tensor) -> MAEFrozen:
        return MAEFrozen(random_mask(images.shape[0], self.student.num_patches, self.cfg.mask_ratio, images.device))

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's output [B, 1+V, D], the pixel loss at the masked patches)."""
        latent = self.student.encode(images, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_keep, mask.ids_masked)
        pixel = ops.masked_pixel_loss(pred, images, mask.ids_masked, self.student.patch_size, self.cfg.norm_pix)
        return latent, pixel

    def trained_pass(self, images: torch.Tensor, frozen: MAEFrozen) -> MethodOutput:
        _, pixel = self.reconstruct(images, frozen.mask)
        return MethodOutput(pixel, {"pixel": pixel}, frozen.mask)

    def step_flops(self) -> StepFlops:
        s = self.student
        kept = num_kept(s.num_patches, self.cfg.mask_ratio)
        s_patch, s_blocks = student_flops(s, kept, s.depth)
        decoder = decoder_flops(self.decoder, s.embed_dim, kept)
        return StepFlops(0.0, s_patch + s_blocks + decoder, 0.0, 2 * (s_blocks + decoder) + s_patch)
