"""MaskDistill computed the straightforward way (BEiT v2's code structure), on a fastmim method's weights: the
`reference` path of benchmarks/throughput.py.

- the block mask drawn by the plain-PyTorch reference (fastmim.ops.reference.block_mask);
- the student as BEiT v2 runs it: the patch embedding over every patch (convolution), the masked ones replaced
  by the mask token (a blend with the 0/1 mask), the position embedding, the blocks, the final norm;
- the head on every token, then the masked ones selected;
- the teacher's full forward (every row of its last block), every row normalized, then gathered at the masked
  patches; smooth-L1 with beta.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastmim.ops import reference

from .base import MethodOutput
from .mae_reference import full_teacher
from .masks import Mask, num_masked


def dense_forward(student, images: torch.Tensor, is_masked: torch.Tensor) -> torch.Tensor:
    proj = student.patch_embed.proj
    x = F.conv2d(images, proj.weight, proj.bias, stride=student.patch_size).flatten(2).transpose(1, 2)
    w = is_masked[..., None].to(x.dtype)
    x = x * (1 - w) + student.mask_token.to(x.dtype) * w + student.pos_embed[:, 1:]
    cls = (student.cls_token + student.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls.to(x.dtype), x], dim=1)
    for block in student.blocks:
        x = block(x)
    return student.norm(x)


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


class MaskDistillReference(nn.Module):
    """Wraps a MaskDistill method (sharing its weights and teacher)."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def frozen_pass(self, images: torch.Tensor):
        s = self.method.student
        keep, masked = reference.block_mask(images.shape[0], s.grid, s.grid,
                                            num_masked(s.num_patches, self.method.cfg.mask_ratio), images.device)
        return Mask(keep, masked), full_teacher(self.method.teacher, images)

    def trained_pass(self, images: torch.Tensor, frozen, mask: Mask | None = None) -> MethodOutput:
        method = self.method
        drawn, target = frozen
        mask = mask or drawn
        is_masked = torch.zeros(images.shape[0], method.student.num_patches, dtype=torch.bool, device=images.device)
        is_masked.scatter_(1, mask.ids_masked, True)
        pred = method.head(dense_forward(method.student, images, is_masked)[:, 1:])  # the head on every token
        normalized = F.layer_norm(target, target.shape[-1:])  # every row, then the gather
        distill = F.smooth_l1_loss(gather_rows(pred, mask.ids_masked).float(),
                                   gather_rows(normalized[:, 1:], mask.ids_masked), beta=method.cfg.beta)
        return MethodOutput(distill, {"distill": distill}, mask)

    def forward(self, images: torch.Tensor, mask: Mask | None = None) -> MethodOutput:
        return self.trained_pass(images, self.frozen_pass(images), mask)
