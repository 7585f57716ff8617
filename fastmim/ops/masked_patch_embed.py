"""masked_patch_embed: patch-embed only the kept patches (the student's "masked patch-drop").

Equals `conv2d(images, weight, bias, stride=p).flatten(2).transpose(1, 2) + pos_embed` gathered at ids_keep,
but gathers the K kept patches' pixels first and runs one GEMM over them, so the masked 70 % of the
patches cost nothing.
"""
from __future__ import annotations

import torch

from ._checks import check_indices, check_same_device, check_shape, check_tensor, guarded_indices


def validate(images, ids_keep, weight, bias=None, pos_embed=None) -> tuple[int, int, int]:
    """Check every argument; return (patch size p, grid height, grid width)."""
    check_tensor("images", images, ndim=4)
    check_tensor("weight", weight, ndim=4)
    if weight.dtype != images.dtype:
        raise TypeError(f"weight must have the dtype of images ({images.dtype}), got {weight.dtype}")
    dim, channels, p, p2 = weight.shape
    if p != p2:
        raise ValueError(f"weight must be [D, C, p, p] with square patches, got {list(weight.shape)}")
    if images.shape[1] != channels:
        raise ValueError(f"images has {images.shape[1]} channels but weight expects {channels}")
    height, width = images.shape[-2:]
    if height % p or width % p:
        raise ValueError(f"images size {height}x{width} is not divisible by the patch size {p}")
    grid_h, grid_w = height // p, width // p
    check_tensor("ids_keep", ids_keep, ndim=2, floating=False)
    if ids_keep.shape[0] != images.shape[0]:
        raise ValueError(f"ids_keep has batch {ids_keep.shape[0]} but images has batch {images.shape[0]}")
    for name, t, shape in (("bias", bias, (dim,)), ("pos_embed", pos_embed, (grid_h * grid_w, dim))):
        if t is not None:
            check_tensor(name, t)
            check_shape(name, t, shape)
            if t.dtype != images.dtype:
                raise TypeError(f"{name} must have the dtype of images ({images.dtype}), got {t.dtype}")
    check_same_device("images", images, ids_keep=ids_keep, weight=weight, bias=bias, pos_embed=pos_embed)
    check_indices("ids_keep", ids_keep, grid_h * grid_w)
    return p, grid_h, grid_w


def gather_patches(images: torch.Tensor, ids_keep: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] → [B, K, C·p·p] rows in the (c, i, j) order of the Conv2d weight."""
    b, c, h, w = images.shape
    patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, (h // p) * (w // p), c * p * p)
    return patches.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def masked_patch_embed_reference(images, ids_keep, weight, bias=None, pos_embed=None):
    """Plain PyTorch: gather kept patches, one matmul, add the kept positions' embedding."""
    p, grid_h, grid_w = validate(images, ids_keep, weight, bias, pos_embed)
    ids_keep = guarded_indices("masked_patch_embed", "ids_keep", ids_keep, grid_h * grid_w)
    kept = gather_patches(images, ids_keep, p)
    out = kept @ weight.reshape(weight.shape[0], -1).t()
    if bias is not None:
        out = out + bias.to(out.dtype)  # the product's dtype, as conv2d's bias under autocast
    if pos_embed is not None:
        out = out + pos_embed[ids_keep].to(out.dtype)
    return out


# --- the fused op: torch.ops.<library>.masked_patch_embed (csrc/{cpu,cuda}/masked_patch_embed.*) -----------

def _fake(images, ids_keep, weight, bias=None, pos_embed=None):
    return images.new_empty(images.shape[0], ids_keep.shape[1], weight.shape[0])


def is_channels_last(images) -> bool:
    """The kernels' test (csrc/common/validate.h): a pixel's channels adjacent, so patches gather in (i, j, c) order."""
    return images.shape[1] > 1 and images.stride(1) == 1 and images.stride(3) == images.shape[1]


def _fake_backward(grad_out, images, ids_keep, weight, output_mask):
    p = weight.shape[-1]
    num_patches = (images.shape[2] // p) * (images.shape[3] // p)
    shapes = (images.shape, weight.shape, (weight.shape[0],), (num_patches, weight.shape[0]))
    grads = [images.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, output_mask)]
    if output_mask[0] and is_channels_last(images):  # the kernels return it channels-last, as the images
        grads[0] = torch.empty_like(grads[0], memory_format=torch.channels_last)
    return tuple(grads)


def _setup_context(ctx, inputs, output):
    images, ids_keep, weight, bias, pos_embed = inputs
    ctx.save_for_backward(images, ids_keep, weight)
    ctx.has_bias, ctx.has_pos = bias is not None, pos_embed is not None


def register_fused(library: str = "fastmim"):
    """Register the fake kernel, autograd and autocast rule of `library`::masked_patch_embed and return the
    function that calls it."""
    from . import _autocast

    op = getattr(torch.ops, library)

    def backward(ctx, grad):
        images, ids_keep, weight = ctx.saved_tensors
        wanted = ctx.needs_input_grad
        mask = [wanted[0], wanted[2], ctx.has_bias and wanted[3], ctx.has_pos and wanted[4]]
        grads = op.masked_patch_embed_backward(grad, images, ids_keep, weight, mask)
        grad_images, grad_weight, grad_bias, grad_pos = (g if m else None for g, m in zip(grads, mask))
        return grad_images, None, grad_weight, grad_bias, grad_pos

    def masked_patch_embed_fused(images, ids_keep, weight, bias=None, pos_embed=None):
        """The compiled kernel: one gather pass (with the kept positions' embedding) and one addmm."""
        validate(images, ids_keep, weight, bias, pos_embed)
        return op.masked_patch_embed(images, ids_keep, weight, bias, pos_embed)

    torch.library.register_fake(f"{library}::masked_patch_embed", _fake)
    torch.library.register_fake(f"{library}::masked_patch_embed_backward", _fake_backward)
    torch.library.register_autograd(f"{library}::masked_patch_embed", backward, setup_context=_setup_context)
    # As conv2d under autocast: images, weight, bias and pos_embed in the autocast dtype, so eager and the fake
    # kernel (torch.compile) agree on the output dtype and the patch GEMM runs in it.
    _autocast.register(library, "masked_patch_embed")
    return masked_patch_embed_fused
