"""MaskAlign.compile_blocks (`--compile`): the compiled step computes what the eager one does."""
import copy

import torch

from fastmim.methods.maskalign import MaskAlign

from tests.conftest import TINY_IMAGE, tiny_config


def test_compiled_blocks_give_the_eager_loss_and_gradients():
    torch.manual_seed(0)
    # a CLIP-architecture teacher, so the folded QuickGELU MLP goes through the compiler too
    cfg = tiny_config(teacher="clip_b16", teacher_kwargs=dict(embed_dim=64, depth=4, num_heads=2))

    eager = MaskAlign(cfg, TINY_IMAGE)
    compiled = copy.deepcopy(eager)
    compiled.compile_blocks()
    images = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    expected = eager(images)
    torch.manual_seed(1)  # the same attention-guided mask
    out = compiled(images)
    torch.testing.assert_close(out.mask.ids_keep, expected.mask.ids_keep)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-6)
    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    for ours, theirs in zip(torch.autograd.grad(out.loss, params(compiled)),
                            torch.autograd.grad(expected.loss, params(eager))):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in [*compiled.student.blocks, *compiled.teacher.model.blocks[:-1]])
