import math

import pytest
import torch

from fastmim.methods.base import MethodOutput
from fastmim.train.schedule import learning_rate, peak_lr
from fastmim.train.step import train_step


def test_schedule_warmup_then_half_cosine():
    assert peak_lr(1.5e-4, 1024) == pytest.approx(6e-4)
    lrs = [learning_rate(s, 1.0, 0.1, 10, 110) for s in range(111)]
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.poison = False

    def forward(self, x):
        loss = (self.w * x).sum() * (float("nan") if self.poison else 1.0)
        return MethodOutput(loss, {"toy": loss})


def test_non_finite_loss_skips_the_update_and_is_flagged():
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    x = torch.ones(3)
    good = train_step(model, opt, [x], torch.autocast("cpu", enabled=False), None)
    after_good = model.w.detach().clone()
    assert not torch.equal(after_good, torch.ones(3)) and good.found_inf.item() == 0
    model.poison = True
    for clip in (1.0, None, None):
        bad = train_step(model, opt, [x], torch.autocast("cpu", enabled=False), clip)
        assert bad.found_inf.item() == 1
    assert torch.equal(model.w.detach(), after_good)  # NaN steps changed nothing
    model.poison = False
    train_step(model, opt, [x], torch.autocast("cpu", enabled=False), None)
    assert opt.state[model.w]["step"].item() == 2  # the skipped steps did not advance Adam's step count


def test_the_step_reports_the_gradient_norm_before_clipping():
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x = torch.tensor([3.0, 0.0, 4.0])  # d(w·x)/dw = x: norm 5
    result = train_step(model, opt, [x], torch.autocast("cpu", enabled=False), 1.0)
    assert result.grad_norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(model.w.detach(), torch.ones(3) - x / 5)  # the update used the clipped gradient


def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    a, b = Toy(), Toy()
    xs = torch.randn(4, 3)
    opt_a = torch.optim.AdamW(a.parameters(), lr=0.1, fused=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1, fused=True)
    off = torch.autocast("cpu", enabled=False)
    train_step(a, opt_a, [xs[:2].sum(0), xs[2:].sum(0)], off, None)
    train_step(b, opt_b, [xs.sum(0) / 2], off, None)
    torch.testing.assert_close(a.w, b.w)
