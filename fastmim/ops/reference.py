"""The pure-PyTorch references of every op: the semantics the compiled kernels must reproduce."""
from .align_loss import align_loss_reference as align_loss
from .block_mask import block_mask_reference as block_mask
from .dynamic_align import dynamic_align_reference as dynamic_align
from .masked_patch_embed import masked_patch_embed_reference as masked_patch_embed
from .masked_pixel_loss import masked_pixel_loss_reference as masked_pixel_loss

__all__ = ["masked_patch_embed", "dynamic_align", "align_loss", "masked_pixel_loss", "block_mask"]
