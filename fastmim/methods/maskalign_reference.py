"""MaskAlign computed the way the original code computes it, assembled from fastmim's own modules: the
yardstick for tests and the `reference` path of benchmarks/throughput.py.

- teacher: an explicit re-normalization pass over the image, every block with eager attention whose full
  attention maps are all returned, QuickGELU as three elementwise ops on the original MLP weights, every
  level kept;
- student: patch embedding over all patches (convolution), then the gather of the kept tokens;
- targets: every teacher level normalized over all its tokens, then gathered;
- Dynamic Alignment: stacked einsum over every level, every level through a head (zero-weight levels too);
- loss: separate ops per level, summed with the level weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastmim.models.teacher import FoldedQuickGELU, Teacher, TeacherOutput, renormalization

from .base import MethodOutput
from .maskalign import MaskAlign
from .masks import Mask, draw_mask


def unfolded_patch_embedding(teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Undo the folded re-normalization: the teacher's own patch weights/bias, and the per-channel affine
    map (scale, shift) from the data's normalization to the teacher's."""
    m = teacher.model
    scale, shift = renormalization(m, teacher.data_mean, teacher.data_std)
    folded_w = m.patch_embed.proj.weight.detach().double()
    weight = folded_w / scale[None, :, None, None]
    bias = m.patch_embed.proj.bias.detach().double() - (weight * shift[None, :, None, None]).sum(dim=(1, 2, 3))
    dtype = m.patch_embed.proj.weight.dtype
    return weight.to(dtype), bias.to(dtype), scale.float(), shift.float()


def original_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher MLP as timm's CLIP computes it: fc1, QuickGELU x·σ(1.702x), fc2 — on the original weights
    (the folded ones rescaled back; that costs the reference one pass over its MLP weights, ~1 % of its step)."""
    if not isinstance(mlp.act, FoldedQuickGELU):
        return mlp(x)
    s = FoldedQuickGELU.scale
    h = F.linear(x, mlp.fc1.weight / s, mlp.fc1.bias / s if mlp.fc1.bias is not None else None)
    return F.linear(h * torch.sigmoid(1.702 * h), mlp.fc2.weight * s, mlp.fc2.bias)


@torch.no_grad()
def naive_teacher(teacher: Teacher, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """All block outputs [depth, B, 1+N, D] (CLS + patches) and every block's attention map [B, H, T, T]."""
    m = teacher.model
    weight, bias, scale, shift = unfolded_patch_embedding(teacher)
    images = teacher.prepare(images)
    dev = images.device
    images = images * scale.to(dev, images.dtype)[:, None, None] + shift.to(dev, images.dtype)[:, None, None]
    x = F.conv2d(images, weight.to(dev), bias.to(dev), stride=m.patch_embed.proj.stride).flatten(2).transpose(1, 2)
    x = m.norm_pre(m._pos_embed(x))
    outputs, maps = [], []
    for block in m.blocks:
        attn = block.attn
        y = block.norm1(x)
        b, t, d = y.shape
        q, k, v = attn.qkv(y).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        attn_map = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)
        maps.append(attn_map)
        x = x + block.ls1(attn.proj(attn.norm((attn_map @ v).transpose(1, 2).reshape(b, t, d))))
        x = x + block.ls2(original_mlp(block.mlp, block.norm2(x)))
        outputs.append(teacher.select_tokens(x))
    return torch.stack(outputs), maps


def importance_from_maps(teacher: Teacher, maps: list[torch.Tensor]) -> torch.Tensor:
    return maps[-1][:, :, 0, teacher.num_prefix:].float().mean(dim=1)


def normalize_all_tokens(levels: torch.Tensor, kind: str) -> torch.Tensor:
    levels = levels.float()
    if kind == "layernorm":
        return F.layer_norm(levels, levels.shape[-1:], eps=1e-5)
    if kind == "l2":
        return F.normalize(levels, dim=-1)
    if kind == "batchnorm":
        flat = levels.flatten(1)
        mean, var = flat.mean(1), flat.var(1, unbiased=True)
        return (levels - mean[:, None, None, None]) / (var[:, None, None, None] + 1e-6).sqrt()
    return levels


def level_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    pred, target = pred.float(), target.float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0) * 2
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


def student_conv_then_gather(method: MaskAlign, images: torch.Tensor, ids_keep: torch.Tensor) -> list[torch.Tensor]:
    s = method.student
    s.check_images(images)
    proj = s.patch_embed.proj
    patches = F.conv2d(images, proj.weight, proj.bias, stride=s.patch_size).flatten(2).transpose(1, 2)
    patches = (patches + s.pos_embed[:, 1:]).gather(1, ids_keep[..., None].expand(-1, -1, patches.shape[-1]))
    x = torch.cat([(s.cls_token + s.pos_embed[:, :1]).expand(images.shape[0], -1, -1), patches], dim=1)
    levels = []
    for block in s.blocks:
        x = block(x)
        levels.append(x)
    return levels


class MaskAlignReference(nn.Module):
    """Wraps a MaskAlign (sharing its student, DA weights, heads and teacher) and adds heads for the levels
    MaskAlign does not supervise, as the original code has one head per teacher level."""

    def __init__(self, method: MaskAlign):
        super().__init__()
        self.method = method
        depth, d_in, d_out = method.teacher.depth, method.student.embed_dim, method.teacher.embed_dim
        self.spare_heads = nn.ModuleDict({
            str(level): nn.Linear(d_in, d_out) for level in range(1, depth + 1) if level not in method.levels})
        for head in self.spare_heads.values():
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)

    def head(self, level: int):
        method = self.method
        if level not in method.levels:
            return self.spare_heads[str(level)]
        i = method.levels.index(level)
        if method.cfg.head == "linear":
            return lambda x: F.linear(x, method.head_weight[i], method.head_bias[i])
        return method.heads[i]

    def forward(self, images: torch.Tensor, mask: Mask | None = None) -> MethodOutput:
        return self.trained_pass(images, self.frozen_pass(images), mask)

    def frozen_pass(self, images: torch.Tensor) -> TeacherOutput:
        """Every level, every attention map (kept alive, as the original code returns them)."""
        levels, maps = naive_teacher(self.method.teacher, images)
        self.attention_maps = maps
        return TeacherOutput(levels, importance_from_maps(self.method.teacher, maps))

    def trained_pass(self, images: torch.Tensor, teacher_out: TeacherOutput, mask: Mask | None = None) -> MethodOutput:
        method, cfg = self.method, self.method.cfg
        if mask is None:
            importance = teacher_out.importance if cfg.mask_mode == "attention" else None
            mask = draw_mask(cfg.mask_mode, cfg.mask_ratio, images.shape[0], method.student.num_patches,
                             images.device, importance)
        ids_keep = mask.ids_keep
        rows = torch.cat([torch.zeros_like(ids_keep[:, :1]), ids_keep + 1], dim=1)
        targets = normalize_all_tokens(teacher_out.levels, cfg.target_norm)
        targets = targets[:, torch.arange(images.shape[0], device=images.device)[:, None], rows]

        hidden = torch.stack(student_conv_then_gather(method, images, ids_keep))
        if method.mix is None:
            mixed = list(hidden)
        else:
            mixed = list(torch.einsum("ts,sbnd->tbnd", method.mix.to(hidden.dtype), hidden))
        losses = [level_loss(self.head(level)(mixed[level - 1]), targets[level - 1], cfg.loss)
                  for level in range(1, method.teacher.depth + 1)]
        weights = [method.weights_by_level.get(level, 0.0) for level in range(1, method.teacher.depth + 1)]
        total = sum(w * loss for w, loss in zip(weights, losses))
        level_losses = torch.stack([losses[level - 1] for level in method.levels])
        terms = {f"level_{level}": value for level, value in zip(method.levels, level_losses)}
        return MethodOutput(total, terms, mask, {"level_losses": level_losses})
