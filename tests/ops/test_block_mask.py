"""block_mask: the kernels (CPU, and the CUDA kernel body through the emulation) against a plain-Python
transcription of their documented algorithm on the same Philox stream (mask for mask), Philox against the
Random123 known-answer vectors, both the kernels and the PyTorch reference against BEiT v2's own loop (the
statistics of 2,000 draws), the partition into kept and masked patches, determinism, errors naming the argument,
opcheck, and the GPU kernel against the CPU kernel."""
from __future__ import annotations

import functools
import math
import random

import numpy as np
import pytest
import torch

from fastmim.ops import reference
from fastmim.ops.block_mask import draw_seed

from ..methods.beit_masking import beit_block_mask, components
from .helpers import fused, raw_ops

M32 = 0xFFFFFFFF


# --- a transcription: Philox4x32-10 and the per-sample loop, in plain Python -----------------------------------

def philox(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key & M32, key >> 32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def test_philox_matches_the_random123_known_answers():
    assert philox((0, 0, 0, 0), 0) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox((M32,) * 4, (M32 << 32) | M32) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0x299F31D0 << 32) | 0xA4093822) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def unit(word):
    return np.float32(word >> 8) * np.float32(1 / 16777216)


def transcribed_sample(seed, sample, gh, gw, masked, min_patches=16, min_aspect=0.3, attempts=10):
    """The kernels' documented draw for one sample, BEiT v2's loop on Philox counters (draw, stream, sample):
    float32 rectangle arithmetic, round half to even, integer positions ⌊word·n / 2³²⌋."""
    f32 = np.float32
    lo = f32(math.log(min_aspect))
    span = f32(-2) * lo
    mask = np.zeros((gh, gw), dtype=bool)
    lo_word, hi_word = sample & M32, sample >> 32
    count, draw = 0, 0
    while count < masked:
        remaining, added = masked - count, 0
        for _ in range(attempts):
            r = philox((draw, 0, lo_word, hi_word), seed)
            draw += 1
            area = f32(min_patches) + unit(r[0]) * f32(remaining - min_patches)
            root_aspect = np.exp(f32(0.5) * (lo + unit(r[1]) * span))
            side = np.sqrt(area)
            h, w = int(np.rint(side * root_aspect)), int(np.rint(side / root_aspect))
            if 1 <= h < gh and 1 <= w < gw:
                top, left = (r[2] * (gh - h + 1)) >> 32, (r[3] * (gw - w + 1)) >> 32
                fresh = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < fresh <= remaining:
                    mask[top:top + h, left:left + w] = True
                    added = fresh
                    break
        if added == 0:
            break
        count += added
    draw = 0
    while count < masked:
        for word in philox((draw, 1, lo_word, hi_word), seed):
            patch = (word * gh * gw) >> 32
            if count < masked and not mask.flat[patch]:
                mask.flat[patch] = True
                count += 1
        draw += 1
    flat = mask.reshape(-1)
    return np.flatnonzero(~flat), np.flatnonzero(flat)


# (grid_h, grid_w, masked): MaskDistill's 14 × 14 at 40 %, MAE's 75 %, H ≠ W, a grid too small for any rectangle
# (all top-up), the largest grid, a single masked patch.
GRIDS = [(14, 14, 78), (14, 14, 147), (7, 9, 30), (1, 5, 2), (64, 64, 1638), (4, 4, 1)]


@pytest.mark.parametrize("gh, gw, masked", GRIDS)
def test_kernels_draw_the_transcribed_masks(gh, gw, masked):
    batch, key = (6 if gh == 64 else 40), 0x1234_5678_9ABC_DEF
    keep, ids = raw_ops().block_mask(torch.tensor([key]), batch, gh, gw, masked)
    assert keep.dtype == ids.dtype == torch.int64 and keep.shape == (batch, gh * gw - masked)
    for b in range(batch):
        want_keep, want_masked = transcribed_sample(key, b, gh, gw, masked)
        assert np.array_equal(ids[b].numpy(), want_masked), b
        assert np.array_equal(keep[b].numpy(), want_keep), b


def test_a_sample_beyond_two_to_the_32_has_its_own_stream():
    """The sample index is the counter's upper half: far samples are not copies of near ones."""
    _, ids = raw_ops().block_mask(torch.tensor([7]), 3, 14, 14, 78)
    want = transcribed_sample(7, 2, 14, 14, 78)[1]
    assert np.array_equal(ids[2].numpy(), want)
    assert not np.array_equal(transcribed_sample(7, 2 + (1 << 32), 14, 14, 78)[1], want)


# --- the law: against BEiT v2's loop --------------------------------------------------------------------------

def block_statistics(masks: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(mean number of 4-connected masked components, mean size of the largest, per-position frequency)."""
    sizes = [components(m) for m in masks]
    return (float(np.mean([len(s) for s in sizes])), float(np.mean([max(s) for s in sizes])), masks.mean(axis=0))


@functools.cache
def beit_statistics(masked: int, draws: int):
    rng = random.Random(1)
    theirs = np.stack([beit_block_mask(rng, 14, 14, masked) for _ in range(draws)])
    assert (theirs.reshape(draws, -1).sum(1) == masked).all()
    return block_statistics(theirs)


def implementations():
    return {"kernels": fused().block_mask, "reference": reference.block_mask}


@pytest.mark.parametrize("implementation", ["kernels", "reference"])
@pytest.mark.parametrize("ratio", [0.4, 0.75])
def test_block_masks_match_beits_generator(implementation, ratio):
    """2,000 draws each, 14 × 14 patches: exactly M masked in every sample; the mean number of components and the
    mean largest component within 5 % of BEiT v2's loop; each position's masking frequency within 4.5 standard
    errors of the loop's (the difference of two binomial frequencies: false alarm over the 196 positions < 0.2 %)."""
    draws, m = 2000, int(196 * ratio)
    keep, ids = implementations()[implementation](draws, 14, 14, m, "cpu", torch.Generator().manual_seed(0))
    ours = torch.zeros(draws, 196, dtype=torch.int32).scatter_(1, ids, 1).view(draws, 14, 14).numpy()
    assert (ours.reshape(draws, -1).sum(1) == m).all() and keep.shape == (draws, 196 - m)
    (n_ours, big_ours, f_ours), (n_theirs, big_theirs, f_theirs) = block_statistics(ours), beit_statistics(m, draws)
    assert n_ours == pytest.approx(n_theirs, rel=0.05), (n_ours, n_theirs)
    assert big_ours == pytest.approx(big_theirs, rel=0.05), (big_ours, big_theirs)
    p = (f_ours + f_theirs) / 2
    z = (f_ours - f_theirs) / np.sqrt(np.maximum(2 * p * (1 - p) / draws, 1e-12))
    assert np.abs(z).max() < 4.5, np.abs(z).max()


# --- the partition, determinism, errors -----------------------------------------------------------------------

@pytest.mark.parametrize("implementation", ["kernels", "reference"])
@pytest.mark.parametrize("gh, gw, masked", GRIDS)
def test_kept_and_masked_partition_the_patches_in_ascending_order(implementation, gh, gw, masked):
    batch = 5
    keep, ids = implementations()[implementation](batch, gh, gw, masked, "cpu", torch.Generator().manual_seed(1))
    assert ids.shape == (batch, masked) and keep.shape == (batch, gh * gw - masked)
    assert (ids.diff(dim=1) > 0).all() and (keep.diff(dim=1) > 0).all()
    everything = torch.cat([keep, ids], dim=1).sort(dim=1).values
    assert torch.equal(everything, torch.arange(gh * gw).expand(batch, -1))


@pytest.mark.parametrize("implementation", ["kernels", "reference"])
def test_a_seeded_generator_draws_the_same_masks_and_another_seed_others(implementation):
    draw = lambda seed: implementations()[implementation](16, 14, 14, 78, "cpu",  # noqa: E731
                                                         torch.Generator().manual_seed(seed))
    (ka, ma), (kb, mb), (_, mc) = draw(3), draw(3), draw(4)
    assert torch.equal(ma, mb) and torch.equal(ka, kb) and not torch.equal(ma, mc)


def test_an_empty_batch():
    keep, ids = fused().block_mask(0, 14, 14, 78, "cpu")
    assert keep.shape == (0, 118) and ids.shape == (0, 78)


@pytest.mark.parametrize("args, message", [
    ((4, 14, 14, 0), "masked must be in"), ((4, 14, 14, 196), "masked must be in"), ((-1, 14, 14, 5), "batch"),
    ((4, 65, 14, 5), "patch grid"), ((4, 0, 14, 5), "patch grid"),
])
def test_bad_arguments_are_named(args, message):
    seed = torch.tensor([1])
    for call in (lambda: raw_ops().block_mask(seed, *args), lambda: fused().block_mask(*args, "cpu"),
                 lambda: reference.block_mask(*args, "cpu")):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="min_aspect"):
        raw_ops().block_mask(seed, 4, 14, 14, 78, 16, 0.0)
    with pytest.raises(ValueError, match="min_patches"):
        fused().block_mask(4, 14, 14, 78, "cpu", None, 0)
    with pytest.raises(ValueError, match="attempts"):
        raw_ops().block_mask(seed, 4, 14, 14, 78, 16, 0.3, 0)
    with pytest.raises(TypeError, match="seed must be int64"):
        raw_ops().block_mask(torch.tensor([1.0]), 4, 14, 14, 78)
    with pytest.raises(ValueError, match="seed must hold one value"):
        raw_ops().block_mask(torch.tensor([1, 2]), 4, 14, 14, 78)


def test_opcheck():
    torch.library.opcheck(raw_ops().block_mask.default, (torch.tensor([5]), 3, 14, 14, 78))


# --- on a GPU -------------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_the_gpu_kernel_draws_the_cpu_kernels_masks():
    """Same seed, same masks, up to a rare rectangle whose side rounds the other way (the GPU's fast-math exp,
    square root, division and fused multiply-adds: csrc/common/block_mask_math.h)."""
    seed = draw_seed("cpu", torch.Generator().manual_seed(0))
    keep, ids = torch.ops.fastmim.block_mask(seed.cuda(), 4096, 14, 14, 78)
    keep_cpu, ids_cpu = torch.ops.fastmim.block_mask(seed, 4096, 14, 14, 78)
    assert ids.is_cuda and ids.shape == (4096, 78)
    everything = torch.cat([keep, ids], dim=1).sort(dim=1).values
    assert torch.equal(everything.cpu(), torch.arange(196).expand(4096, -1))
    same = (ids.cpu() == ids_cpu).all(dim=1).float().mean().item()
    assert same > 0.99, same
