"""The fake-CUDA dry run of the training forward (DESIGN §7): for every registered method (the test-only toy
included) at ViT-B shapes with both kernel modes, `method(images)` — the mask, the teachers (`begin`, the mask
drawn from the CLS importance, `finish` at the rows the method reads), the student, the heads or decoder and the
loss — runs on fake tensors with device="cuda" on this machine without a GPU (tests/fake_cuda/dry_run.py). It
raises on a tensor left on the CPU, a host tensor anywhere in the step, and a data-dependent operation or host
synchronization; the outputs must be on the device with the dtypes the step expects. With kernels='fused' the
ops must reach the compiled CUDA kernels' fake implementations, not fall back to the references. Deliberately
wrong variants of a method show that each fault makes it fail.

Not checked without a GPU (left to `benchmarks/gpu.py` and the `@pytest.mark.cuda` tests on one):
- autocast: torch disables `torch.autocast("cuda")` where CUDA is not available, so the dry run runs the step's
  precision set-up (bf16 teachers) without it, and the dtypes inside a bf16 autocast region are not seen;
- the backward engine (it needs a CUDA context): gradients, the fused AdamW step, gradient clipping and the
  `found_inf` skip of fastmim.train.step;
- NCCL (DDP's gradient all-reduce, the metrics' collective) and DALI's `mixed` decoder (nvJPEG, the hardware
  JPEG decoder);
- what happens inside the compiled operators (their fake implementations stand in for them): a synchronization
  in their C++ host code, their numerics (tests/emulation runs their bodies on the CPU) and their speed;
- torch.compile's code generation for CUDA, streams, pinned-memory and non-blocking copies, and memory: fake
  tensors allocate nothing, so whether a batch fits is for benchmarks/gpu.py to find.
"""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

from fastmim import ops
from fastmim.methods.base import METHODS
from fastmim.methods.maskalign import MaskAlign

from ..methods import toy_method  # noqa: F401  (registers the test-only method and its demo recipe)
from .dry_run import DEVICE, HostGuard, HostTensorError, build_fake, check_output, dry_run, fake_mode, vit_b_config

KERNELS = ("fused", "reference")


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_training_forward_runs_on_fake_cuda(method, kernels):
    run = dry_run(vit_b_config(method), kernels)
    check_output(run)
    student = run.method.student
    assert (student.embed_dim, len(student.blocks), student.pos_embed.shape[1]) == (768, 12, 197)  # ViT-B/16, 224 px
    if kernels == "fused" and method != "finetune":  # fine-tuning is timm's classifier: no fused op to reach
        assert "fastmim.masked_patch_embed" in run.fastmim_ops, run.fastmim_ops  # the kernels' fakes ran
    else:
        assert not run.fastmim_ops, run.fastmim_ops


@pytest.mark.parametrize("kernels", KERNELS)
def test_the_teachers_pass(kernels):
    """MaskAlign's frozen pass on its own: `Teacher.begin` (every block but the last, the last block's keys, the CLS
    importance in float32), the mask drawn from it, `Teacher.finish` at the CLS and kept rows; the levels stay in
    the teacher's bf16."""
    previous = ops.kernels_mode()
    ops.set_kernels(kernels)
    try:
        mode = fake_mode()
        method = build_fake(vit_b_config("maskalign"), mode)
        with mode, HostGuard():
            frozen = method.frozen_pass(torch.empty(128, 3, 224, 224, device=DEVICE))
    finally:
        ops.set_kernels(previous)
    assert (frozen.importance.shape, frozen.importance.dtype, frozen.importance.device) == \
        ((128, 196), torch.float32, DEVICE)
    assert (frozen.levels.shape, frozen.levels.dtype, frozen.levels.device) == \
        ((5, 128, 197, 768), torch.bfloat16, DEVICE)
    assert frozen.mask.ids_keep.shape == (128, 58) and frozen.mask.ids_keep.device == DEVICE


@pytest.mark.parametrize("method", ["maskalign", "mrmae"])
def test_fp32_teachers_too(method):
    """--precision fp32 keeps the teachers in float32: the other dtype path through the targets."""
    check_output(dry_run(vit_b_config(method), "fused", precision="fp32"))


def test_the_built_in_methods_call_their_fused_ops():
    """Each of the four reaches the fused ops its objective is built from (fastmim.ops, DESIGN §4)."""
    expected = {"maskalign": {"masked_patch_embed", "dynamic_align", "align_loss"},
                "mae": {"masked_patch_embed", "masked_pixel_loss"},
                "mrmae": {"masked_patch_embed", "masked_pixel_loss", "align_loss"},
                "maskdistill": {"masked_patch_embed", "align_loss", "block_mask"}}
    for method, names in expected.items():
        ran = dry_run(vit_b_config(method), "fused").fastmim_ops
        assert {f"fastmim.{name}" for name in names} <= ran, (method, ran)


# --- deliberately wrong variants: each fault alone must make the dry run fail -------------------------------

def wrong_loss(self, out, frozen):
    """The faults, each as a method's forward might carry it by mistake."""
    fault, per_level = self.fault, out.extras["level_losses"]
    if fault == "no device=":
        return (per_level * torch.linspace(1.0, 0.5, len(self.levels))).sum()  # created on the CPU
    if fault == ".item()":
        return out.loss / max(1.0, out.loss.item())
    if fault == "bool(tensor)":
        return out.loss if torch.isfinite(out.loss) else out.loss.nan_to_num()
    if fault == "nonzero":
        return per_level[per_level > 0].sum()  # boolean indexing: an output shape only the values know
    if fault == "list to device":
        return (per_level * torch.tensor([1.0] * len(self.levels), device=out.loss.device)).sum()
    if fault == ".cpu()":
        self.last_loss = out.loss.detach().cpu()
        return out.loss
    raise ValueError(fault)


class WrongMaskAlign(MaskAlign):
    """MaskAlign with one fault in its forward (not registered: it sets no config_class of its own)."""
    fault = ""

    def trained_pass(self, images, frozen):
        out = super().trained_pass(images, frozen)
        out.loss = wrong_loss(self, out, frozen)
        return out


FAULTS = {"no device=": (HostTensorError, "a tensor in host memory"),
          ".item()": (DataDependentOutputException, "_local_scalar_dense"),
          "bool(tensor)": (DataDependentOutputException, "_local_scalar_dense"),
          "nonzero": (DynamicOutputShapeException, "nonzero"),
          "list to device": (HostTensorError, "lift_fresh"),
          ".cpu()": (HostTensorError, "a copy from the device to the host")}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("kernels", KERNELS)
def test_a_wrong_variant_fails(fault, kernels):
    wrong = type("Wrong", (WrongMaskAlign,), {"fault": fault})
    error, message = FAULTS[fault]
    with pytest.raises(error, match=message):
        dry_run(vit_b_config("maskalign"), kernels, method_class=wrong)


def test_a_tensor_left_on_the_cpu_is_a_device_mismatch_even_without_the_guard():
    """The fake mode itself refuses a CPU tensor meeting the step's CUDA tensors (the HostGuard is stricter)."""
    wrong = type("Wrong", (WrongMaskAlign,), {"fault": "no device="})
    with pytest.raises(RuntimeError, match="found at least two devices, cuda:0 and cpu"):
        dry_run(vit_b_config("maskalign"), "fused", method_class=wrong, guard=False)
