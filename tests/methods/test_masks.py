import itertools
import math

import pytest
import torch

from fastmim.methods.masks import attention_mask, draw_mask, num_kept, random_mask


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
    mask = attention_mask(batch, 1 - keep / 7 - 1e-9)
    ours = mask.ids_keep
    assert ours.shape == (draws, keep) and mask.ids_masked.shape == (draws, 7 - keep)
    theirs = torch.multinomial(batch, 7, replacement=False)[:, :keep]
    for ids in (ours, theirs):
        freq = torch.zeros(7, dtype=torch.float64).index_add_(0, ids.flatten(), torch.ones(ids.numel(), dtype=torch.float64)) / draws
        z = (freq - exact) / torch.sqrt(exact * (1 - exact) / draws)
        assert z.abs().max() < 4.5, (freq, exact)


def test_random_masking_is_uniform_distinct_and_sorted():
    torch.manual_seed(0)
    mask = random_mask(20000, 16, 0.75, "cpu")
    ids = mask.ids_keep
    assert ids.shape == (20000, 4) and mask.ids_masked.shape == (20000, 12)
    assert (ids[:, 1:] > ids[:, :-1]).all() and (mask.ids_masked[:, 1:] > mask.ids_masked[:, :-1]).all()
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
        draw_mask("cube", 0.5, 1, 4, "cpu")
    with pytest.raises(ValueError, match="needs the teacher's importance"):
        draw_mask("attention", 0.5, 1, 4, "cpu")


@pytest.mark.parametrize("mode", ["random", "attention"])
def test_kept_and_masked_split_every_row_of_patches(mode):
    """ids_keep and ids_masked of each sample are disjoint and together hold each of the N patches once."""
    torch.manual_seed(1)
    importance = torch.rand(8, 196).softmax(dim=1)
    mask = draw_mask(mode, 0.7, 8, 196, "cpu", importance)
    assert mask.ids_keep.shape == (8, 58) and mask.ids_masked.shape == (8, 138) and mask.num_patches == 196
    everything = torch.cat([mask.ids_keep, mask.ids_masked], dim=1).sort(dim=1).values
    assert torch.equal(everything, torch.arange(196).expand(8, -1))


def test_the_same_seed_draws_the_same_mask():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = random_mask(4, 49, 0.75, "cpu", g1), random_mask(4, 49, 0.75, "cpu", g2)
    assert torch.equal(a.ids_keep, b.ids_keep) and torch.equal(a.ids_masked, b.ids_masked)
