// One sample of BEiT v2's block-wise masking (microsoft/unilm beit2/masking_generator.py), shared by the CPU
// and CUDA kernels (host and device code alike): both draw from the same law with the same random numbers. Their
// masks for the same seed and sample are equal except where the GPU's fast-math rounding differs from the host's
// (__expf for the aspect, x·rsqrtf(x) for √area, __fdividef, and the multiply-adds nvcc fuses): a rectangle side
// that lands near k + ½ can round the other way, and that sample's mask then differs from there on. That is rare
// (the GPU test and `python -m fastmim.doctor` allow 1 % of the samples); the emulated CUDA kernels, compiled for
// the host, take the host's functions and draw the CPU kernel's masks.
//
// Rounds until M patches are masked: up to `attempts` rectangles are tried in turn — area ~ U(min_patches,
// remaining), aspect log-uniform in [min_aspect, 1/min_aspect], h = round(√(area·aspect)), w = round(√(area /
// aspect)), kept only when h < grid_h and w < grid_w, at a uniform position — and the first that adds between 1
// and `remaining` unmasked patches is masked; a round that adds nothing ends the rounds, and the sample is then
// topped up with uniformly chosen unmasked patches to exactly M. The mask lives in registers and local memory as
// one 64-bit word per patch row, so counting a rectangle's new patches is a popcount per row.
//
// Random numbers: Philox4x32-10 keyed by the call's seed, counter (draw, stream, sample): stream 0 gives one
// draw of four words per attempted rectangle (area, aspect, top, left), stream 1 the top-up's candidates.
#pragma once

#include <cstdint>

#include "align_loss_math.h"
#include "philox.h"

namespace fastmim {

constexpr int kMaxBlockMaskSide = 64;  // one 64-bit word per patch row

struct BlockMaskParams {
  int grid_h, grid_w;
  int masked;         // M, exactly this many per sample
  int min_patches;    // the smallest rectangle area drawn
  int attempts;       // rectangles tried per round
  float log_aspect_lo, log_aspect_span;  // log(min_aspect), log(1/min_aspect) - log(min_aspect)
};

FASTMIM_HD int count_bits(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

// Fast on the GPU (not correctly rounded): the masks' law does not need the last bit (see the top of this file).
FASTMIM_HD float exponential(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}

// The patches one attempt adds to `rows` (0 when the rectangle does not fit or adds nothing or too much).
FASTMIM_HD int try_rectangle(const BlockMaskParams& p, const Philox4& r, int remaining, uint64_t* rows) {
  const float area = static_cast<float>(p.min_patches) +
                     unit_float(r.word[0]) * static_cast<float>(remaining - p.min_patches);
  const float root_aspect = exponential(0.5f * (p.log_aspect_lo + unit_float(r.word[1]) * p.log_aspect_span));
  const float side = square_root(area);
  const int h = static_cast<int>(rintf(side * root_aspect)), w = static_cast<int>(rintf(divide(side, root_aspect)));
  if (h < 1 || w < 1 || h >= p.grid_h || w >= p.grid_w) return 0;
  const int top = static_cast<int>(below(r.word[2], static_cast<uint32_t>(p.grid_h - h + 1)));
  const int left = static_cast<int>(below(r.word[3], static_cast<uint32_t>(p.grid_w - w + 1)));
  const uint64_t columns = ((uint64_t{1} << w) - 1) << left;  // w < grid_w ≤ 64
  int covered = 0;
  for (int i = top; i < top + h; ++i) covered += count_bits(rows[i] & columns);
  const int fresh = h * w - covered;
  if (fresh <= 0 || fresh > remaining) return 0;
  for (int i = top; i < top + h; ++i) rows[i] |= columns;
  return fresh;
}

// The rounds of rectangles; returns the number of masked patches (≤ M).
FASTMIM_HD int mask_blocks(const BlockMaskParams& p, uint64_t seed, uint32_t sample_lo, uint32_t sample_hi,
                           uint64_t* rows) {
  int count = 0;
  uint32_t draw = 0;
  while (count < p.masked) {
    int added = 0;
    for (int a = 0; a < p.attempts && added == 0; ++a) {
      added = try_rectangle(p, philox4x32(draw++, 0u, sample_lo, sample_hi, seed), p.masked - count, rows);
    }
    if (added == 0) break;
    count += added;
  }
  return count;
}

// Uniformly chosen unmasked patches until M are masked: each candidate is a uniform patch, taken when it is
// unmasked, which makes every pick uniform over the patches still unmasked.
FASTMIM_HD void top_up(const BlockMaskParams& p, uint64_t seed, uint32_t sample_lo, uint32_t sample_hi, int count,
                       uint64_t* rows) {
  const uint32_t n = static_cast<uint32_t>(p.grid_h * p.grid_w);
  for (uint32_t draw = 0; count < p.masked; ++draw) {
    const Philox4 r = philox4x32(draw, 1u, sample_lo, sample_hi, seed);
    for (int k = 0; k < 4 && count < p.masked; ++k) {
      const int patch = static_cast<int>(below(r.word[k], n));
      const uint64_t bit = uint64_t{1} << (patch % p.grid_w);
      if ((rows[patch / p.grid_w] & bit) == 0) {
        rows[patch / p.grid_w] |= bit;
        ++count;
      }
    }
  }
}

// Sample `sample`'s mask as ascending patch indices: keep [N - M] and masked [M].
FASTMIM_HD void block_mask_sample(const BlockMaskParams& p, uint64_t seed, int64_t sample, int64_t* keep,
                                  int64_t* masked) {
  uint64_t rows[kMaxBlockMaskSide];
  for (int i = 0; i < p.grid_h; ++i) rows[i] = 0;
  const uint32_t lo = static_cast<uint32_t>(sample), hi = static_cast<uint32_t>(static_cast<uint64_t>(sample) >> 32);
  top_up(p, seed, lo, hi, mask_blocks(p, seed, lo, hi, rows), rows);
  int64_t k = 0, m = 0;
  for (int i = 0; i < p.grid_h; ++i) {
    for (int j = 0; j < p.grid_w; ++j) {
      const int64_t patch = static_cast<int64_t>(i) * p.grid_w + j;
      if ((rows[i] >> j) & 1) {
        masked[m++] = patch;
      } else {
        keep[k++] = patch;
      }
    }
  }
}

}  // namespace fastmim
