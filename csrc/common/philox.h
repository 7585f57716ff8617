// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based
// generator, four 32-bit words from a 128-bit counter and a 64-bit key with no state to carry. Host and device
// code alike, so the CPU and CUDA kernels draw the same numbers for the same (seed, counter).
#pragma once

#include <cstdint>

#include "index_math.h"

namespace fastmim {

struct Philox4 {
  uint32_t word[4];
};

FASTMIM_HD uint32_t high_word(uint64_t x) { return static_cast<uint32_t>(x >> 32); }

FASTMIM_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;    // the round multipliers
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // the key schedule's increments
  uint32_t k0 = static_cast<uint32_t>(key), k1 = high_word(key);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0, p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t n0 = high_word(p1) ^ c1 ^ k0, n2 = high_word(p0) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// A uniform float in [0, 1) from the word's top 24 bits (exact in float32).
FASTMIM_HD float unit_float(uint32_t word) { return static_cast<float>(word >> 8) * (1.0f / 16777216.0f); }

// A uniform integer in [0, n) (Lemire's multiply-shift; its bias is below n / 2³², nothing for n ≤ 4096).
FASTMIM_HD uint32_t below(uint32_t word, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(word) * n) >> 32);
}

}  // namespace fastmim
