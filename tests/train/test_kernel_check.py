"""The trainer's start-up check of the fused kernels on a GPU: a mismatch falls back to the references with a
warning under --kernels auto and is an error under --kernels fused; the CPU is not checked (its kernels are
tested in CI)."""
from __future__ import annotations

import pytest
import torch

from fastmim import ops
from fastmim.ops import _extension, selfcheck
from fastmim.train import trainer

GPU = torch.device("cuda", 0)


@pytest.fixture
def broken_gpu(monkeypatch):
    wrong = selfcheck.Check("align_loss", torch.bfloat16, "out", 1.0, 1e-3, False)
    monkeypatch.setattr(_extension, "runs_on", lambda device: True)
    monkeypatch.setattr(selfcheck, "check_ops", lambda device: [wrong])
    yield
    ops.set_kernels("auto")


def test_auto_warns_and_uses_the_references(broken_gpu):
    ops.set_kernels("auto")
    with pytest.warns(RuntimeWarning, match="disagree with the references on cuda:0 .*align_loss bfloat16 out"):
        trainer.check_kernels_on(GPU, "auto")
    assert ops.kernels_mode() == "reference"


def test_fused_is_an_error(broken_gpu):
    ops.set_kernels("fused")
    with pytest.raises(selfcheck.KernelMismatchError, match="--kernels fused: the fused kernels disagree"):
        trainer.check_kernels_on(GPU, "fused")


def test_the_cpu_and_the_references_are_not_checked(monkeypatch):
    monkeypatch.setattr(selfcheck, "check_ops", lambda device: pytest.fail("checked"))
    trainer.check_kernels_on(torch.device("cpu"), "fused")
    trainer.check_kernels_on(GPU, "reference")
