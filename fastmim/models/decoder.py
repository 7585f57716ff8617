"""MAE's decoder (facebookresearch/mae): the encoder's tokens widened to the decoder's width, a learned mask
token at every masked position, the fixed 2-D sin-cos position embedding (a zero row for the CLS token), a stack
of pre-norm blocks, a LayerNorm and a linear projection to the p²·C pixel values of a patch.

Given the mask as a value, the un-shuffle is one scatter of the kept tokens into a sequence of mask tokens; the
final norm and projection run at the masked positions only, the only ones the loss reads (MAE computes them at
every position and discards the rest).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .pos_embed import sincos_2d
from .vit import Block, init_linears_and_norms, set_blocks_attention


class MAEDecoder(nn.Module):
    def __init__(self, grid: int, encoder_dim: int, patch_values: int, dim: int = 512, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0, attn_backend: str = "sdpa"):
        super().__init__()
        self.num_patches = grid * grid
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_2d(dim, grid, grid)[None], requires_grad=False)  # fixed
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, 0.0, attn_backend) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_values)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialisation: N(0, .02) mask token, xavier-uniform linears with zero bias, unit LayerNorms."""
        nn.init.normal_(self.mask_token, std=0.02)
        init_linears_and_norms(self)

    def set_attention_backend(self, name: str, device) -> str:
        return set_blocks_attention(self.blocks, name, device)

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
        """latent [B, 1+V, D]: the encoder's CLS and kept tokens (in ids_keep's order) → the predicted pixels of
        the masked patches [B, M, p²·C] (in ids_masked's order)."""
        x = self.embed(latent)
        b, _, dim = x.shape
        tokens = self.mask_token.to(x.dtype).expand(b, self.num_patches, dim)
        tokens = tokens.scatter(1, ids_keep[..., None].expand(-1, -1, dim), x[:, 1:])
        x = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        masked = x.gather(1, (ids_masked + 1)[..., None].expand(-1, -1, dim))
        return self.pred(self.norm(masked))
