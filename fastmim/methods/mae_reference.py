"""MAE and MR-MAE computed the straightforward way, on a fastmim method's weights: the `reference` path of
benchmarks/throughput.py.

- MAE as models_mae.py does it: the patch embedding over every patch (convolution), then the gather of the
  kept tokens; the un-shuffle by concatenation and gather; the decoder's norm and projection at every token;
  the loss against a patchified copy of the batch over every patch, then the masked mean;
- MR-MAE's mimic: each teacher's full forward (timm's blocks, every row of the last one), every row of it
  normalized, then gathered at the CLS and kept tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import MethodOutput
from .masks import Mask, random_mask


@dataclass
class ShuffledMask:
    """MAE's masking: the noise's order, and where each patch went."""
    ids_shuffle: torch.Tensor
    ids_restore: torch.Tensor
    kept: int


def shuffled(mask: Mask) -> ShuffledMask:
    order = torch.cat([mask.ids_keep, mask.ids_masked], dim=1)
    return ShuffledMask(order, order.argsort(dim=1), mask.ids_keep.shape[1])


def encode(student, images: torch.Tensor, m: ShuffledMask) -> torch.Tensor:
    proj = student.patch_embed.proj
    x = F.conv2d(images, proj.weight, proj.bias, stride=student.patch_size).flatten(2).transpose(1, 2)
    x = x + student.pos_embed[:, 1:]
    x = x.gather(1, m.ids_shuffle[:, :m.kept, None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([(student.cls_token + student.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
    for block in student.blocks:
        x = block(x)
    return student.norm(x)


def decode(decoder, latent: torch.Tensor, m: ShuffledMask) -> torch.Tensor:
    """Predictions at every patch [B, N, p²·C]."""
    x = decoder.embed(latent)
    tokens = decoder.mask_token.repeat(x.shape[0], m.ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:], tokens], dim=1).gather(1, m.ids_restore[..., None].expand(-1, -1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], dim=1) + decoder.pos_embed
    for block in decoder.blocks:
        x = block(x)
    return decoder.pred(decoder.norm(x))[:, 1:]


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def pixel_loss(images, pred, m: ShuffledMask, p: int, norm_pix: bool) -> torch.Tensor:
    target = patchify(images, p)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    mask = torch.ones_like(loss)
    mask[:, :m.kept] = 0
    mask = mask.gather(1, m.ids_restore)
    return (loss * mask).sum() / mask.sum()


@torch.no_grad()
def full_teacher(teacher, images: torch.Tensor) -> torch.Tensor:
    """The teacher's last block at every row, through timm's own blocks: [B, 1+N, D]."""
    m = teacher.model
    x = m.norm_pre(m._pos_embed(m.patch_embed(teacher.prepare(images))))
    for block in m.blocks:
        x = block(x)
    return teacher.select_tokens(x).float()


class MAEReference(nn.Module):
    """Wraps an MAE or MR-MAE method (sharing its weights and teachers)."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def frozen_pass(self, images: torch.Tensor):
        method = self.method
        mask = random_mask(images.shape[0], method.student.num_patches, method.cfg.mask_ratio, images.device)
        return mask, [full_teacher(t, images) for t in method.teachers]

    def trained_pass(self, images: torch.Tensor, frozen, mask: Mask | None = None) -> MethodOutput:
        method = self.method
        drawn, targets = frozen
        m = shuffled(mask or drawn)
        latent = encode(method.student, images, m)
        pixel = pixel_loss(images, decode(method.decoder, latent, m), m, method.student.patch_size,
                           method.cfg.norm_pix)
        terms, total = {"pixel": pixel}, pixel
        for name, head, target, weight in zip(getattr(method, "term_names", []), getattr(method, "mimic_heads", []),
                                              targets, getattr(method, "mimic_weights", [])):
            normalized = F.layer_norm(target, target.shape[-1:])  # every row, then the gather
            rows = torch.cat([torch.zeros_like(m.ids_shuffle[:, :1]), m.ids_shuffle[:, :m.kept] + 1], dim=1)
            picked = normalized.gather(1, rows[..., None].expand(-1, -1, normalized.shape[-1]))
            mimic = F.mse_loss(head(latent).float(), picked)
            terms[name] = mimic
            total = total + weight * mimic
        return MethodOutput(total, terms, mask or drawn)

    def forward(self, images: torch.Tensor, mask: Mask | None = None) -> MethodOutput:
        return self.trained_pass(images, self.frozen_pass(images), mask)
