"""The student ViT: MAE-style encoder that embeds only the kept patches and returns every block's output.

Two modes: `visible` (the CLS token and the kept patches: MaskAlign, MAE, MR-MAE) and `dense` (every patch, the
masked ones replaced by a learned `mask_token` before the position embedding is added: MaskDistill, BEiT v2
style). Optional layer scale (`init_values`).

State-dict keys are timm's `vit_<size>_patch16_224` keys (patch_embed.proj, cls_token, pos_embed,
blocks.i.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}, norm), so a pretrained student
loads into timm (with `init_values` when it has layer scale) for fine-tuning with only the classifier head
missing; `mask_token` is pretraining-only and not exported.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale, Mlp

from fastmim import ops

from .attention import attention, resolve_backend
from .pos_embed import sincos_2d


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int


SIZES = {
    "tiny": ViTSize(192, 12, 3),
    "small": ViTSize(384, 12, 6),
    "base": ViTSize(768, 12, 12),
    "large": ViTSize(1024, 24, 16),
    "huge": ViTSize(1280, 32, 16),
}


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, self.backend)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block with timm's parameter names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, backend: str,
                 init_values: float | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, backend)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def init_linears_and_norms(root: nn.Module) -> None:
    """MAE's initialisation of every Linear (xavier-uniform, zero bias) and LayerNorm (ones, zeros) below root."""
    for module in root.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def set_blocks_attention(blocks, name: str, device) -> str:
    """The attention backend of every block, resolved for the device (an error when it cannot run there)."""
    backend = resolve_backend(name, device)
    for block in blocks:
        block.attn.backend = backend
    return backend


class PatchEmbed(nn.Module):
    """Holds the Conv2d weights under timm's name; the computation is `ops.masked_patch_embed`."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 attn_backend: str = "sdpa", init_values: float | None = None, mask_token: bool = False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.embed_dim, self.depth = embed_dim, depth
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, not learned: a Parameter without grad (as MAE) so timm finds `pos_embed` in the state dict.
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid, self.grid)[None], requires_grad=False)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r, attn_backend, init_values)
                                    for r in rates)
        # dense mode: what a masked patch's embedding is replaced by (before the position embedding)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if mask_token else None
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # kept for timm; MaskAlign levels are pre-norm
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialisation (models_mae.py's initialize_weights): the patch projection's weight xavier-uniform
        on its flattened [D, C·p·p] view — its bias keeps the convolution's default initialization, as MAE leaves
        it —, N(0, .02) CLS and mask tokens, xavier-uniform linears with zero biases, LayerNorms at one and zero."""
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(self.embed_dim, -1))
        nn.init.normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        init_linears_and_norms(self)

    def set_attention_backend(self, name: str, device) -> str:
        return set_blocks_attention(self.blocks, name, device)

    def check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"images must be [B, {self.in_chans}, H, W], got {list(images.shape)}")
        if tuple(images.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"images must be {self.img_size}x{self.img_size}, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")

    def embed(self, images: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """CLS token followed by the kept patches' embeddings (all patches when ids_keep is None)."""
        self.check_images(images)
        if ids_keep is None:
            ids_keep = torch.arange(self.num_patches, device=images.device).expand(images.shape[0], -1)
        proj = self.patch_embed.proj
        patches = ops.masked_patch_embed(images, ids_keep, proj.weight, proj.bias, self.pos_embed[0, 1:])
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(images.shape[0], -1, -1)
        return torch.cat([cls.to(patches.dtype), patches], dim=1)

    def embed_dense(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """CLS followed by all N patches [B, 1+N, D]: the kept ones embedded, the others `mask_token`, each plus its
        position embedding. Equal to embedding every patch and then replacing the masked ones (BEiT v2), but only
        the kept patches go through the patch embedding."""
        if self.mask_token is None:
            raise ValueError("dense mode needs a student built with mask_token=True")
        kept = self.embed(images, ids_keep)
        cls, patches = kept[:, :1], kept[:, 1:]
        b, _, d = patches.shape
        fill = (self.mask_token + self.pos_embed[:, 1:]).to(patches.dtype).expand(b, self.num_patches, d)
        return torch.cat([cls, fill.scatter(1, ids_keep[..., None].expand(-1, -1, d), patches)], dim=1)

    def encode_dense(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Every token's output [B, 1+N, D] after the final norm, the masked patches given as mask tokens."""
        x = self.embed_dense(images, ids_keep)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def encode(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output [B, 1+K, D] after the final norm (MAE's forward_encoder)."""
        return self.norm(self(images, ids_keep)[-1])

    def forward(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None,
                depth: int | None = None) -> list[torch.Tensor]:
        """Outputs of blocks 1..depth (all by default), each [B, 1+K, D], before the final norm."""
        x = self.embed(images, ids_keep)
        levels = []
        for block in self.blocks[: depth or self.depth]:
            x = block(x)
            levels.append(x)
        return levels


def vit_model(size: str = "base", **kwargs) -> VisionTransformer:
    """A student by size name (tiny/small/base/large/huge); kwargs override the size's defaults."""
    if size not in SIZES:
        raise ValueError(f"unknown student size {size!r}; known: {sorted(SIZES)}")
    spec = SIZES[size]
    params = dict(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads)
    params.update(kwargs)
    return VisionTransformer(**params)
