"""torch.compile(fullgraph=True) over a function that uses every fused op, forward and backward: block masks drawn
on the images' device, the kept patches embedded, levels mixed and aligned, and the masked patches' pixels
predicted (MAE's loss)."""
from __future__ import annotations

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from fastmim import ops

from .helpers import fused

FUSED = ("block_mask", "masked_patch_embed", "dynamic_align", "align_loss", "masked_pixel_loss")


def loss_fn(images, weight, bias, pos_embed, cls, mix, head_weight, head_bias, target, pixel_head):
    keep, masked = ops.block_mask(images.shape[0], 2, 3, 3, images.device, min_patches=1)  # [B, 3] each
    patches = ops.masked_patch_embed(images, keep, weight, bias, pos_embed)           # [B, K, D]
    tokens = torch.cat([cls.expand(images.shape[0], -1, -1), patches], dim=1)         # [B, 1+K, D]
    hidden = torch.stack([tokens, torch.tanh(tokens), tokens * 0.5])                  # [S, B, 1+K, D]
    pred = ops.dynamic_align(hidden, mix, head_weight, head_bias)                     # [L, B, 1+K, Dt]
    align = ops.align_loss(pred, target, ops.cls_and_kept_rows(keep), "smooth_l1", "layernorm").sum()
    pixels = (patches.mean(1, keepdim=True) + pos_embed[masked]) @ pixel_head         # [B, M, p²·C]
    return align + ops.masked_pixel_loss(pixels, images, masked, 16)


def inputs():
    g = torch.Generator().manual_seed(0)
    batch, d, dt, levels = 2, 16, 12, 2
    leaf = lambda *shape: (torch.randn(*shape, generator=g) * 0.3).requires_grad_()  # noqa: E731
    images = torch.randn(batch, 3, 32, 48, generator=g)
    return [images, leaf(d, 3, 16, 16), leaf(d), torch.randn(6, d, generator=g), leaf(1, 1, d), leaf(levels, 3),
            leaf(levels, dt, d), leaf(levels, dt), torch.randn(levels, batch, 7, dt, generator=g), leaf(d, 768)]


def run(fn):
    args = inputs()
    torch.manual_seed(0)  # the masks' seed: the same draw in eager and compiled runs
    loss = fn(*args)
    loss.backward()
    return loss.detach(), [a.grad for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def called_ops(graphs) -> set[str]:
    """What the graphs Dynamo captured call (the backward ops run from the ops' autograd formulas)."""
    return {str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}


def test_compile_fullgraph_all_ops():
    fused()
    ops.set_kernels("fused")
    try:
        torch._dynamo.reset()
        eager_loss, eager_grads = run(loss_fn)
        backend = CompileCounterWithBackend("inductor")  # keeps the graphs it compiles
        # fallback_random: the masks' seed drawn by torch.randint, as in eager; no graph caches: a cached graph would
        # hide a fake kernel changed since it was compiled
        with torch._inductor.config.patch(fallback_random=True, fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            compiled_loss, compiled_grads = run(torch.compile(loss_fn, fullgraph=True, backend=backend))
    finally:
        ops.set_kernels("auto")
    assert {f"fastmim.{name}" for name in FUSED} <= called_ops(backend.graphs)  # one graph calls every op
    torch.testing.assert_close(compiled_loss, eager_loss)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)
