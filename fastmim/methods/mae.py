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
from .pictures import PictureData, per_image, unnormalize_patches


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

    def frozen_pass(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MAEFrozen:
        """The random mask, drawn from `generator` (None: the device's default)."""
        return MAEFrozen(random_mask(images.shape[0], self.student.num_patches, self.cfg.mask_ratio, images.device,
                                     generator))

    def decode(self, images: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's output [B, 1+V, D], the decoder's prediction at the masked patches [B, M, p²·C])."""
        latent = self.student.encode(images, mask.ids_keep)
        return latent, self.decoder(latent, mask.ids_keep, mask.ids_masked)

    def pixel_loss(self, pred: torch.Tensor, images: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        return ops.masked_pixel_loss(pred, images, ids_masked, self.student.patch_size, self.cfg.norm_pix)

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's output [B, 1+V, D], the pixel loss at the masked patches)."""
        latent, pred = self.decode(images, mask)
        return latent, self.pixel_loss(pred, images, mask.ids_masked)

    def picture(self, images: torch.Tensor, generator: torch.Generator) -> PictureData:
        """The mask, each image's pixel loss and the reconstruction of its masked patches."""
        mask = self.frozen_pass(images, generator).mask
        _, pred = self.decode(images, mask)
        loss = per_image(lambda b: self.pixel_loss(pred[b], images[b], mask.ids_masked[b]), images.shape[0])
        return PictureData(mask, loss, reconstruction=self.reconstructed_pixels(pred, images, mask))

    def reconstructed_pixels(self, pred: torch.Tensor, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """The prediction at the masked patches in the images' space: with norm_pix, un-normalized with each target
        patch's own mean and variance, as MAE's demo shows it."""
        if not self.cfg.norm_pix:
            return pred.float()
        return unnormalize_patches(pred, images, mask.ids_masked, self.student.patch_size)

    def trained_pass(self, images: torch.Tensor, frozen: MAEFrozen) -> MethodOutput:
        _, pixel = self.reconstruct(images, frozen.mask)
        return MethodOutput(pixel, {"pixel": pixel}, frozen.mask)

    def step_flops(self) -> StepFlops:
        s = self.student
        kept = num_kept(s.num_patches, self.cfg.mask_ratio)
        s_patch, s_blocks = student_flops(s, kept, s.depth)
        decoder = decoder_flops(self.decoder, s.embed_dim, kept)
        return StepFlops(0.0, s_patch + s_blocks + decoder, 0.0, 2 * (s_blocks + decoder) + s_patch)
