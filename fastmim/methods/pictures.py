"""What a method shows of itself in a picture (`python -m fastmim.visualize`, `train.picture_every`): the values
its `Method.picture(images, generator)` returns, and the patch bookkeeping the methods share. Drawing them is
fastmim/pictures.py's job; nothing here knows about colours or files.

Patches are numbered row-major (n = row · grid + column), as everywhere in fastmim; a level row is CLS = 0 and
patch n = 1 + n. Pixel values of a patch are in MAE's (p, q, c) order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fastmim.ops.align_loss import normalize_rows
from fastmim.ops.masked_pixel_loss import patch_targets

from .masks import Mask


@dataclass
class PictureData:
    """A method's picture of a batch of B images of N patches (float32 tensors on the images' device)."""
    mask: Mask                                   # the mask the method drew: ids_keep [B, V], ids_masked [B, M]
    loss: torch.Tensor                           # [B]: each image's loss (the method's objective on it alone)
    importance: torch.Tensor | None = None       # [B, N]: the teacher's CLS importance the mask was drawn from
    reconstruction: torch.Tensor | None = None   # [B, M, p²·C]: the predicted pixels at ids_masked, in the space
                                                 # of the (normalized) input images, un-normalized per patch
                                                 # when the targets were (norm_pix)
    similarity: torch.Tensor | None = None       # [B, N]: cosine similarity of prediction and teacher target at
                                                 # each supervised patch, NaN at the others
    similarity_of: str = ""                      # what `similarity` compares, in words (which level, teacher)


def unnormalize_patches(pred: torch.Tensor, images: torch.Tensor, ids: torch.Tensor, patch_size: int,
                        eps: float = 1e-6) -> torch.Tensor:
    """MAE's demo for `norm_pix` predictions [B, M, p²·C] at the patches `ids` [B, M]: each prediction times
    √(var + eps) plus the mean of its own target patch (mean and unbiased variance over the patch's p²·C values,
    as ops.masked_pixel_loss normalizes them), so that it is in the images' space again."""
    target = patch_targets(images.float(), ids, patch_size)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred.float() * (var + eps).sqrt() + mean


def row_cosine(pred: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, target_norm: str,
               eps: float = 1e-5) -> torch.Tensor:
    """[B, R]: the cosine similarity of prediction row j of image b (pred [B, R, D]) with target row rows[b, j] of
    `target` [B, T, D], that row normalized as the loss normalizes it (`layernorm`, `l2`, `none`; ops.align_loss)."""
    gathered = target.gather(1, rows[..., None].expand(-1, -1, target.shape[-1])).float()
    return F.cosine_similarity(pred.float(), normalize_rows(gathered, target_norm, eps), dim=-1)


def patch_map(values: torch.Tensor, rows: torch.Tensor, num_patches: int) -> torch.Tensor:
    """[B, N]: `values` [B, R] at level rows `rows` [B, R] put at their patches (row 1 + n → patch n), NaN at the
    patches not among the rows; the CLS row (0) has no patch and is left out."""
    out = values.new_full((values.shape[0], num_patches + 1), float("nan"))
    return out.scatter(1, rows, values.float())[:, 1:]


def per_image(loss_of: Callable[[slice], torch.Tensor], batch: int) -> torch.Tensor:
    """[B]: `loss_of(slice(b, b + 1))` — the method's loss on image b's rows alone — for every image b."""
    return torch.stack([loss_of(slice(b, b + 1)).float().reshape(()) for b in range(batch)])
