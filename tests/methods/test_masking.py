import itertools
import math

import pytest
import torch

from fastmim.methods.masking import keep_indices, num_kept


def exact_inclusion(p: torch.Tensor, keep: int) -> torch.Tensor:
    """P(patch n is among the `keep` draws) for sequential draws without replacement ∝ p, by enumerating
    every ordered outcome."""
    p = p.double()
    inclusion = torch.zeros_like(p)
    for seq in itertools.permutations(range(len(p)), keep):
        prob, left = 1.0, 1.0
        for i in seq:
            prob *= p[i].item() / left
            left -= p[i].item()
        inclusion[list(seq)] += prob
    return inclusion


def test_attention_masking_draws_like_multinomial_without_replacement():
    """Per-patch keep frequencies of Gumbel-top-k and of torch.multinomial(…, replacement=False)[:, :V] are
    each compared with the exact inclusion probabilities by a z-test per patch; |z| < 4.5 for all 7 patches
    (false alarm < 1e-4 for the whole test)."""
    torch.manual_seed(0)
    importance = torch.tensor([0.40, 0.20, 0.15, 0.10, 0.08, 0.05, 0.02])
    keep, draws = 3, 40000
    exact = exact_inclusion(importance, keep)
    batch = importance.expand(draws, -1)
    ours = keep_indices("attention", 1 - keep / 7 - 1e-9, draws, 7, "cpu", importance=batch)
    assert ours.shape == (draws, keep)
    theirs = torch.multinomial(batch, 7, replacement=False)[:, :keep]
    for ids in (ours, theirs):
        freq = torch.zeros(7, dtype=torch.float64).index_add_(0, ids.flatten(), torch.ones(ids.numel(), dtype=torch.float64)) / draws
        z = (freq - exact) / torch.sqrt(exact * (1 - exact) / draws)
        assert z.abs().max() < 4.5, (freq, exact)


def test_random_masking_is_uniform_distinct_and_sorted():
    torch.manual_seed(0)
    ids = keep_indices("random", 0.75, 20000, 16, "cpu")
    assert ids.shape == (20000, 4)
    assert (ids[:, 1:] > ids[:, :-1]).all()  # sorted and distinct
    freq = torch.bincount(ids.flatten(), minlength=16).double() / 20000
    p = 4 / 16
    assert ((freq - p) / math.sqrt(p * (1 - p) / 20000)).abs().max() < 4.5


def test_kept_count_and_bad_ratio():
    assert num_kept(196, 0.7) == 58
    assert num_kept(196, 0.0) == 196
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="mask_ratio must be in"):
            num_kept(196, ratio)
    with pytest.raises(ValueError, match="mask mode must be one of"):
        keep_indices("block", 0.5, 1, 4, "cpu")
    with pytest.raises(ValueError, match="needs the teacher's importance"):
        keep_indices("attention", 0.5, 1, 4, "cpu")
