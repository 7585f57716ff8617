"""torch.utils.flop_counter's count of one training step of a method: the yardstick of flops_per_image."""
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fastmim import ops


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


# The teacher's last block calls SDPA itself (it needs q and K for the CLS-attention row). torch's counter has
# formulas for the CUDA SDPA kernels only, so the CPU kernel is given the same one (keyed, like the counter's own
# table, by the op's overload packet).
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def counted(method, images) -> tuple[int, int]:
    """(forward, backward) FLOPs of one step as torch's counter sees them, with the reference ops (plain matmuls
    the counter sees) and the teachers' attention written out. The student's attention should be `math`."""
    for teacher in method.teachers:  # timm's fused attention is SDPA: the counter sees the explicit products
        teacher.model.blocks.apply(lambda m: setattr(m, "fused_attn", False) if hasattr(m, "fused_attn") else None)
    previous = ops.kernels_mode()
    ops.set_kernels("reference")
    try:
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as forward_counter:
            out = method(images)
        with FlopCounterMode(display=False) as backward_counter:
            out.loss.backward()
    finally:
        ops.set_kernels(previous)
    return forward_counter.get_total_flops(), backward_counter.get_total_flops()
