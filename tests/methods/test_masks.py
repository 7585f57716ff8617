import itertools
import math

import numpy as np
import pytest
import torch

from fastmim.methods.masks import attention_mask, block_mask, draw_mask, num_kept, random_mask

from .beit_masking import components


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
    with pytest.raises(ValueError, match="square patch grid"):
        draw_mask("block", 0.4, 1, 12, "cpu")
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


# --- block masks (their law against BEiT v2's loop: tests/ops/test_block_mask.py) ---------------------------------

def mean_components(ids: torch.Tensor, draws: int) -> tuple[float, float]:
    """(mean number of 4-connected masked components, mean size of the largest) of [draws, M] masked ids."""
    grids = torch.zeros(draws, 196, dtype=torch.int32).scatter_(1, ids, 1).view(-1, 14, 14).numpy()
    sizes = [components(g) for g in grids]
    return float(np.mean([len(s) for s in sizes])), float(np.mean([max(s) for s in sizes]))


def test_block_masks_are_blocks_not_noise():
    """A check the statistics test could not fail without: random masks have many more, smaller components."""
    draws = 500
    block = block_mask(draws, 14, 14, 0.4, "cpu", torch.Generator().manual_seed(2))
    scattered = random_mask(draws, 196, 0.4, "cpu", torch.Generator().manual_seed(2))  # 79 masked, uniformly
    n_block, big_block = mean_components(block.ids_masked, draws)
    n_random, big_random = mean_components(scattered.ids_masked, draws)
    assert n_block < 0.5 * n_random and big_block > 2 * big_random


def test_block_masks_are_deterministic_under_a_seeded_generator():
    a = block_mask(16, 14, 14, 0.4, "cpu", torch.Generator().manual_seed(3))
    b = block_mask(16, 14, 14, 0.4, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(a.ids_masked, b.ids_masked) and torch.equal(a.ids_keep, b.ids_keep)
    everything = torch.cat([a.ids_keep, a.ids_masked], dim=1).sort(dim=1).values
    assert torch.equal(everything, torch.arange(196).expand(16, -1))


@pytest.mark.cuda
def test_block_masks_on_the_gpu_are_drawn_there():
    mask = block_mask(64, 14, 14, 0.4, "cuda")
    assert mask.ids_masked.is_cuda and mask.ids_masked.shape == (64, 78)
