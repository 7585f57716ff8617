"""Which implementation fastmim.ops runs: the compiled kernels on CPU tensors, the references when asked
(set_kernels, FASTMIM_KERNELS) or when the extension is missing (with one warning) or stale (saying "rebuild");
CUDA kernels registered."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastmim import ops
from fastmim.ops import _autocast, _backend, _extension, reference

from .helpers import cuda_toolkit_present, fused

OPS = ("masked_patch_embed", "align_loss", "dynamic_align", "masked_pixel_loss", "block_mask")
ALL_OPS = OPS + ("masked_patch_embed_backward", "align_loss_backward", "dynamic_align_backward")


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def run_all_ops():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=g)
    weight = torch.randn(8, 3, 16, 16, generator=g, requires_grad=True)
    keep = ops.block_mask(2, 2, 2, 2, "cpu", g)[0]  # 2 of the 2 × 2 patches kept
    patches = ops.masked_patch_embed(images, keep, weight, None, torch.zeros(4, 8))
    tokens = torch.cat([patches[:, :1], patches], dim=1)  # [B, 1+K, D]
    pred = ops.dynamic_align(torch.stack([tokens, tokens.tanh()]), torch.ones(1, 2))
    loss = ops.align_loss(pred, torch.randn(1, 2, 5, 8, generator=g), ops.cls_and_kept_rows(keep)).sum()
    loss = loss + ops.masked_pixel_loss(patches.repeat(1, 1, 96), images, keep, 16)
    loss.backward()
    return loss


def test_cpu_tensors_run_the_compiled_cpu_kernels():
    fused()
    for name in ALL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmim::{name}", "CPU"), name
    ops.set_kernels("auto")
    with OpRecorder() as recorder:
        run_all_ops()
    assert {f"fastmim.{name}" for name in ALL_OPS} <= recorder.names, recorder.names


def test_cuda_kernels_are_registered():
    if not cuda_toolkit_present():
        pytest.skip("no CUDA toolkit here, so setup.py built the CPU kernels only")
    fused()
    for name in ALL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmim::{name}", "CUDA"), name


def test_set_kernels_reference_and_back():
    try:
        ops.set_kernels("reference")
        assert ops.kernels_mode() == "reference"
        with OpRecorder() as recorder:
            run_all_ops()
        assert not any(name.startswith("fastmim.") for name in recorder.names)
        ops.set_kernels("fused")
        with OpRecorder() as recorder:
            run_all_ops()
        assert "fastmim.align_loss" in recorder.names
    finally:
        ops.set_kernels("auto")
    with pytest.raises(ValueError, match="kernels must be one of"):
        ops.set_kernels("triton")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_environment_variable_forces_the_reference():
    result = run_python("""
        import fastmim.ops as ops
        from fastmim.ops import _backend, reference
        assert ops.kernels_mode() == "reference"
        assert _backend.implementation("align_loss") is reference.align_loss
        print("ok")
    """, FASTMIM_KERNELS="reference")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    result = run_python("import fastmim.ops", FASTMIM_KERNELS="fast")
    assert result.returncode != 0 and "FASTMIM_KERNELS must be one of" in result.stderr


def test_missing_extension_falls_back_with_one_warning():
    result = run_python("""
        import sys, warnings
        sys.modules["fastmim._C"] = None  # as if the extension had not been built
        import torch
        import fastmim.ops as ops
        assert ops.fused_ops() is None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                ops.dynamic_align(torch.randn(2, 1, 3, 4), torch.ones(1, 2))
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "running the PyTorch references" in messages[0], messages
        try:
            ops.set_kernels("fused")
        except RuntimeError as error:
            assert "fastmim._C" in str(error)
            print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_reference_namespace_is_the_references():
    assert reference.align_loss.__name__ == "align_loss_reference"
    assert fused().align_loss.__name__ == "align_loss_fused"


def test_auto_sends_cuda_tensors_to_the_reference_where_the_kernels_cannot_run(monkeypatch):
    """A library without code for the GPU's architecture (review F1) or without CUDA kernels at all: auto warns
    once and runs the references there, fused is an error saying why; CPU tensors keep the CPU kernels."""
    from types import SimpleNamespace

    monkeypatch.setattr(_extension, "runs_on", lambda device: torch.device(device).type == "cpu")
    monkeypatch.setattr(_extension, "why_not", lambda device: "fastmim._C holds no code for this GPU")
    monkeypatch.setattr(_backend, "reference", SimpleNamespace(align_loss=lambda *args: "reference"))
    monkeypatch.setattr(_backend, "_warned", [])
    gpu_tensor = SimpleNamespace(device=torch.device("cuda", 0))
    try:
        ops.set_kernels("auto")
        chosen = _backend.implementation("align_loss")
        with pytest.warns(RuntimeWarning, match="holds no code for this GPU"):
            assert chosen(gpu_tensor, None, None) == "reference"
        g = torch.Generator().manual_seed(0)
        pred, target = torch.randn(1, 2, 3, 4, generator=g), torch.randn(1, 2, 5, 4, generator=g)
        with OpRecorder() as recorder:
            chosen(pred, target, torch.tensor([[0, 1, 2], [0, 3, 4]]))
        assert "fastmim.align_loss" in recorder.names
        ops.set_kernels("fused")
        with pytest.raises(RuntimeError, match="kernels='fused': fastmim._C holds no code for this GPU"):
            _backend.implementation("align_loss")(gpu_tensor, None, None)
    finally:
        ops.set_kernels("auto")


def test_kernel_version_without_cuda_kernels_is_zero(monkeypatch):
    monkeypatch.setitem(_extension._state, "cuda", False)
    monkeypatch.setitem(_extension._state, "versions", {})
    assert _extension.kernel_version(torch.device("cuda", 0)) == 0
    assert _extension.runs_on(torch.device("cpu"))
    assert not _extension.runs_on(torch.device("cuda", 0))


def test_ops_lists_every_operator_fastmim_ops_registers_for(monkeypatch):
    """_extension.OPS is what a library must hold: one without an operator of the list (built from older sources)
    is not used, where registering the operator's fake kernel would have failed on import."""
    touched = set()
    record = lambda qualname, *args, **kwargs: touched.add(qualname.split("::")[1])  # noqa: E731
    monkeypatch.setattr(torch.library, "register_fake", record)
    monkeypatch.setattr(torch.library, "register_autograd", record)
    monkeypatch.setattr(_autocast, "register", lambda library, name, *args: touched.add(name))
    _backend.register_library("fastmim")
    assert set(_backend.OP_MODULES) <= touched
    assert touched <= set(_extension.OPS), touched - set(_extension.OPS)


def test_a_library_without_a_newer_operator_says_rebuild(monkeypatch):
    """As fastmim._C built before block_mask existed: the kernels are not used, and every message says rebuild."""
    monkeypatch.setattr(_extension, "OPS", _extension.OPS + ("added_since",))
    monkeypatch.setattr(_extension, "_state", {})
    monkeypatch.setattr(_backend, "_fused", [])
    assert not _extension.load() and _backend.fused_ops() is None
    assert _extension.load_error() == ("fastmim._C was built from older sources: it lacks "
                                       "torch.ops.fastmim.added_since; rebuild it")
    with pytest.raises(RuntimeError, match="lacks torch.ops.fastmim.added_since; rebuild it"):
        ops.set_kernels("fused")
