"""Each method's analytic FLOP count (flops_per_image, for MFU) equals torch.utils.flop_counter's count of the
same step, forward and backward, on small configurations with explicit-math attention and the reference ops
(plain matmuls the counter sees)."""
import pytest
import torch

from fastmim.methods.configs import MAEConfig, MaskDistillConfig, MRMAEConfig
from fastmim.methods.mae import MAE
from fastmim.methods.maskalign import MaskAlign
from fastmim.methods.maskdistill import MaskDistill
from fastmim.methods.mrmae import MRMAE
from tests.conftest import TINY_IMAGE, tiny_config

from .flop_count import counted


TINY = dict(student="tiny", student_kwargs=dict(embed_dim=64, depth=3, num_heads=2), drop_path=0.0,
            attn_backend="math", decoder_dim=32, decoder_depth=2, decoder_heads=2)
TEACHER = dict(teacher_kwargs=dict(depth=3), teacher_weights=("random",))


def check(method, expected, images):
    forward, backward = counted(method, images)
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
    method = MaskAlign(tiny_config(attn_backend="math", **overrides), TINY_IMAGE)
    check(method, method.step_flops(), torch.randn(2, 3, 64, 64))


def test_mae():
    torch.manual_seed(0)
    method = MAE(MAEConfig(**TINY), TINY_IMAGE)
    check(method, method.step_flops(), torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("teachers,mask_mode", [(("vit_tiny_patch16_224",), "random"),
                                                (("vit_tiny_patch16_224",), "attention"),
                                                (("vit_tiny_patch16_224", "vit_small_patch16_224"), "attention")])
def test_mrmae(teachers, mask_mode):
    torch.manual_seed(0)
    method = MRMAE(MRMAEConfig(**TINY, **TEACHER, teachers=teachers, mask_mode=mask_mode), TINY_IMAGE)
    check(method, method.step_flops(), torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("teacher", ["vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_maskdistill(teacher):
    torch.manual_seed(0)
    tiny = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
    method = MaskDistill(MaskDistillConfig(**tiny, teacher=teacher, teacher_weights="random",
                                           teacher_kwargs=dict(depth=3)), TINY_IMAGE)
    check(method, method.step_flops(), torch.randn(2, 3, 64, 64))
