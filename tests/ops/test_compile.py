"""torch.compile(fullgraph=True) over a function that uses all three fused ops, forward and backward."""
from __future__ import annotations

import torch

from fastmim import ops

from .helpers import fused


def loss_fn(images, ids_keep, weight, bias, pos_embed, cls, mix, head_weight, head_bias, target):
    patches = ops.masked_patch_embed(images, ids_keep, weight, bias, pos_embed)      # [B, K, D]
    tokens = torch.cat([cls.expand(images.shape[0], -1, -1), patches], dim=1)         # [B, 1+K, D]
    hidden = torch.stack([tokens, torch.tanh(tokens), tokens * 0.5])                  # [S, B, 1+K, D]
    pred = ops.dynamic_align(hidden, mix, head_weight, head_bias)                     # [L, B, 1+K, Dt]
    return ops.align_loss(pred, target, ops.cls_and_kept_rows(ids_keep), "smooth_l1", "layernorm").sum()


def inputs():
    g = torch.Generator().manual_seed(0)
    batch, d, dt, levels = 2, 16, 12, 2
    leaf = lambda *shape: (torch.randn(*shape, generator=g) * 0.3).requires_grad_()  # noqa: E731
    images = torch.randn(batch, 3, 32, 48, generator=g)
    keep = torch.tensor([[0, 4, 5], [1, 2, 3]])
    return [images, keep, leaf(d, 3, 16, 16), leaf(d), torch.randn(6, d, generator=g), leaf(1, 1, d),
            leaf(levels, 3), leaf(levels, dt, d), leaf(levels, dt), torch.randn(levels, batch, 7, dt, generator=g)]


def run(fn):
    args = inputs()
    loss = fn(*args)
    loss.backward()
    return loss.detach(), [a.grad for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def test_compile_fullgraph_all_three_ops():
    fused()
    ops.set_kernels("fused")
    try:
        torch._dynamo.reset()
        eager_loss, eager_grads = run(loss_fn)
        compiled_loss, compiled_grads = run(torch.compile(loss_fn, fullgraph=True))
    finally:
        ops.set_kernels("auto")
    torch.testing.assert_close(compiled_loss, eager_loss)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)
