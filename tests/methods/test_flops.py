"""Each method's analytic FLOP count (flops_per_image, for MFU) equals torch.utils.flop_counter's count of the
same step, forward and backward, on small configurations with explicit-math attention and the reference ops
(plain matmuls the counter sees)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fastmim import ops
from fastmim.methods.configs import MAEConfig, MaskDistillConfig, MRMAEConfig
from fastmim.methods.flops import mae_step_flops, maskalign_step_flops, maskdistill_step_flops, mrmae_step_flops
from fastmim.methods.mae import MAE
from fastmim.methods.maskalign import MaskAlign
from fastmim.methods.maskdistill import MaskDistill
from fastmim.methods.mrmae import MRMAE
from tests.conftest import tiny_config


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


# The teacher's last block calls SDPA itself (it needs q and K for the CLS-attention row). torch's counter has
# formulas for the CUDA SDPA kernels only, so the CPU kernel is given the same one (keyed, like the counter's own
# table, by the op's overload packet).
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}

TINY = dict(student="tiny", student_kwargs=dict(embed_dim=64, depth=3, num_heads=2), img_size=64, drop_path=0.0,
            attn_backend="math", decoder_dim=32, decoder_depth=2, decoder_heads=2)
TEACHER = dict(teacher_kwargs=dict(depth=3), teacher_weights=("random",))


def counted(method, images):
    """(forward, backward) FLOPs of one step as torch's counter sees them."""
    for teacher in method.teachers:  # timm's fused attention is SDPA: the counter sees the explicit products
        teacher.model.blocks.apply(lambda m: setattr(m, "fused_attn", False) if hasattr(m, "fused_attn") else None)
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as forward_counter:
        out = method(images)
    with FlopCounterMode(display=False) as backward_counter:
        out.loss.backward()
    return forward_counter.get_total_flops(), backward_counter.get_total_flops()


def check(method, expected, images):
    ops.set_kernels("reference")
    try:
        forward, backward = counted(method, images)
    finally:
        ops.set_kernels("auto")
    assert forward == pytest.approx(2 * (expected.teacher_forward + expected.student_forward + expected.head_forward),
                                    rel=1e-9)
    assert backward == pytest.approx(2 * expected.backward, rel=1e-9)
    assert method.flops_per_image() == pytest.approx(expected.total)


# The teacher's last block differs by case: kept rows with importance (default), kept rows without it (random),
# every row (batchnorm targets), importance only (last level unsupervised), not run at all (random + mid1).
@pytest.mark.parametrize("overrides", [{}, dict(mask_mode="random"), dict(target_norm="batchnorm"),
                                       dict(level_weights="mid1"), dict(mask_mode="random", level_weights="mid1"),
                                       dict(head="mlp")])
def test_maskalign(overrides):
    torch.manual_seed(0)
    method = MaskAlign(tiny_config(attn_backend="math", **overrides))
    check(method, maskalign_step_flops(method), torch.randn(2, 3, 64, 64))


def test_mae():
    torch.manual_seed(0)
    method = MAE(MAEConfig(**TINY))
    check(method, mae_step_flops(method), torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("teachers,mask_mode", [(("vit_tiny_patch16_224",), "random"),
                                                (("vit_tiny_patch16_224",), "attention"),
                                                (("vit_tiny_patch16_224", "vit_small_patch16_224"), "attention")])
def test_mrmae(teachers, mask_mode):
    torch.manual_seed(0)
    method = MRMAE(MRMAEConfig(**TINY, **TEACHER, teachers=teachers, mask_mode=mask_mode))
    check(method, mrmae_step_flops(method), torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("teacher", ["vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_maskdistill(teacher):
    torch.manual_seed(0)
    tiny = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
    method = MaskDistill(MaskDistillConfig(**tiny, teacher=teacher, teacher_weights="random",
                                           teacher_kwargs=dict(depth=3)))
    check(method, maskdistill_step_flops(method), torch.randn(2, 3, 64, 64))
