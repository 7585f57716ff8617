import warnings

import pytest
import torch

from fastmim.train import precision


def test_auto_precision_and_bad_names():
    assert precision.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert precision.resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="train.precision must be"):
        precision.resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_warns(monkeypatch, fast_bf16):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"
        precision.resolve_precision("bf16", torch.device("cuda"))  # never about the GPU
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if fast_bf16:
        assert messages == []
    else:
        assert len(messages) == 1 and "train.precision=fp32" in messages[0]


def test_the_probe_answers_on_this_machine():
    assert isinstance(precision.cpu_has_fast_bf16(), bool)
