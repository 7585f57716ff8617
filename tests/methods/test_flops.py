import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fastmim import ops
from fastmim.methods.flops import maskalign_step_flops
from fastmim.methods.maskalign import MaskAlign
from tests.conftest import tiny_config


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


# The teacher's last block calls SDPA itself (it needs q and K for the CLS-attention row). torch's counter has
# formulas for the CUDA SDPA kernels only, so the CPU kernel is given the same one (keyed, like the counter's own
# table, by the op's overload packet).
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


# The teacher's last block differs by case: kept rows with importance (default), kept rows without it (random),
# every row (batchnorm targets), importance only (last level unsupervised), not run at all (random + mid2).
@pytest.mark.parametrize("overrides", [{}, dict(mask_mode="random"), dict(target_norm="batchnorm"),
                                       dict(level_weights="mid2"), dict(mask_mode="random", level_weights="mid2"),
                                       dict(head="mlp")])
def test_analytic_count_equals_torch_flop_counter(overrides):
    """On a small config with explicit-math attention and the reference ops (plain matmuls the counter sees),
    the analytic forward and forward+backward counts equal torch.utils.flop_counter's."""
    ops.set_kernels("reference")
    try:
        method = MaskAlign(tiny_config(attn_backend="math", **overrides))
        method.teacher.model.blocks.apply(lambda m: setattr(m, "fused_attn", False) if hasattr(m, "fused_attn") else None)
        images = torch.randn(2, 3, 64, 64)
        expected = maskalign_step_flops(method)
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as forward_counter:
            out = method(images)
        with FlopCounterMode(display=False) as backward_counter:
            out.loss.backward()
    finally:
        ops.set_kernels("auto")
    forward = expected.teacher_forward + expected.student_forward + expected.align_forward
    assert forward_counter.get_total_flops() == pytest.approx(2 * forward, rel=1e-9)
    assert backward_counter.get_total_flops() == pytest.approx(2 * expected.backward, rel=1e-9)
