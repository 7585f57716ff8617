// Small device helpers shared by the CUDA kernels (included from .cu files only): vector loads and stores,
// warp and block sums, the vector width a tensor allows, and the device error flag.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "../common/checks.h"
#include "device_errors.h"
#include "runtime.h"

namespace fastmim::cuda {

constexpr int kWarp = 32;

// One aligned access of 4, 8 or 16 bytes, as 32-bit words. nvcc emits one 64/128-bit instruction for uint2/uint4
// and, unpacking words with shifts, keeps the values in registers: a struct of eight c10::BFloat16 (or four
// floats) built member by member was stored as four 32-bit stores, and memcpy into a local array of 16-bit
// values went through the stack.
#if defined(FASTMIM_SIMT_EMULATION)
struct alignas(16) Words4 {
  unsigned x, y, z, w;
};
struct alignas(8) Words2 {
  unsigned x, y;
};
#else
using Words4 = uint4;
using Words2 = uint2;
#endif

template <int W>
struct WordsOf;
template <>
struct WordsOf<1> { using type = unsigned; };
template <>
struct WordsOf<2> { using type = Words2; };
template <>
struct WordsOf<4> { using type = Words4; };

template <int W>
__device__ __forceinline__ unsigned word(const typename WordsOf<W>::type& r, int i) {
  if constexpr (W == 1) {
    return r;
  } else if constexpr (W == 2) {
    return i == 0 ? r.x : r.y;
  } else {
    return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
  }
}

template <int W>
__device__ __forceinline__ void set_word(typename WordsOf<W>::type& r, int i, unsigned v) {
  if constexpr (W == 1) {
    r = v;
  } else if constexpr (W == 2) {
    (i == 0 ? r.x : r.y) = v;
  } else {
    (i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w) = v;
  }
}

__device__ __forceinline__ float float_from_bits(unsigned bits) {
#if defined(FASTMIM_SIMT_EMULATION)
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
#else
  return __uint_as_float(bits);
#endif
}

__device__ __forceinline__ unsigned bits_of_float(float f) {
#if defined(FASTMIM_SIMT_EMULATION)
  unsigned bits;
  memcpy(&bits, &f, sizeof(bits));
  return bits;
#else
  return __float_as_uint(f);
#endif
}

// One store instruction of the raw words. NVVM split a plain uint4 store of converted floats into four 32-bit
// stores inside loops (seen in rescale_kernel's SASS), so on the GPU the width is spelled out.
template <typename Raw>
__device__ __forceinline__ void store_words(void* p, const Raw& raw) {
#if defined(FASTMIM_SIMT_EMULATION)
  *reinterpret_cast<Raw*>(p) = raw;
#else
  if constexpr (sizeof(Raw) == 16) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(raw.x), "r"(raw.y), "r"(raw.z),
                 "r"(raw.w)
                 : "memory");
  } else if constexpr (sizeof(Raw) == 8) {
    asm volatile("st.global.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(raw.x), "r"(raw.y) : "memory");
  } else {
    *reinterpret_cast<Raw*>(p) = raw;
  }
#endif
}

// A value of T (float, c10::Half or c10::BFloat16) from its bits, and back.
template <typename T>
__device__ __forceinline__ float to_float(unsigned bits) {
  if constexpr (sizeof(T) == 4) {
    return float_from_bits(bits);
  } else {
    return static_cast<float>(T(static_cast<uint16_t>(bits), T::from_bits()));
  }
}

template <typename T>
__device__ __forceinline__ unsigned bits_of(float value) {
  if constexpr (sizeof(T) == 4) {
    return bits_of_float(value);
  } else {
    return T(value).x;
  }
}

// Accesses of N values of T go in pieces of at most 16 bytes (the widest load and store), each aligned to
// its own size.
template <int N, typename T>
constexpr int kPieceBytes = N * static_cast<int>(sizeof(T)) < 16 ? N * static_cast<int>(sizeof(T)) : 16;

// N consecutive values of T at p, as floats.
template <int N, typename T>
__device__ __forceinline__ void load_floats(const T* p, float (&out)[N]) {
  if constexpr (N == 1) {
    out[0] = static_cast<float>(*p);
  } else {
    constexpr int words = kPieceBytes<N, T> / 4, per_word = 4 / sizeof(T), per_piece = words * per_word;
    using Raw = typename WordsOf<words>::type;
#pragma unroll
    for (int piece = 0; piece < N / per_piece; ++piece) {
      check_aligned(p + piece * per_piece, sizeof(Raw), "vector load");
      const Raw raw = *reinterpret_cast<const Raw*>(p + piece * per_piece);
#pragma unroll
      for (int i = 0; i < per_piece; ++i) {
        const unsigned w = word<words>(raw, i / per_word);
        out[piece * per_piece + i] = to_float<T>(per_word == 1 ? w : (w >> (16 * (i % per_word))) & 0xffffu);
      }
    }
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[N]) {
  if constexpr (N == 1) {
    *p = static_cast<T>(in[0]);
  } else {
    constexpr int words = kPieceBytes<N, T> / 4, per_word = 4 / sizeof(T), per_piece = words * per_word;
    using Raw = typename WordsOf<words>::type;
#pragma unroll
    for (int piece = 0; piece < N / per_piece; ++piece) {
      Raw raw;
#pragma unroll
      for (int w = 0; w < words; ++w) {
        unsigned bits = 0;
#pragma unroll
        for (int v = 0; v < per_word; ++v) bits |= bits_of<T>(in[piece * per_piece + w * per_word + v]) << (16 * v);
        set_word<words>(raw, w, bits);
      }
      check_aligned(p + piece * per_piece, sizeof(Raw), "vector store");
      store_words(p + piece * per_piece, raw);
    }
  }
}

// N consecutive values copied without conversion.
template <int N, typename T>
__device__ __forceinline__ void copy_values(T* dst, const T* src) {
  if constexpr (N == 1) {
    *dst = *src;
  } else {
    constexpr int words = kPieceBytes<N, T> / 4, per_piece = words * 4 / sizeof(T);
    using Raw = typename WordsOf<words>::type;
#pragma unroll
    for (int piece = 0; piece < N / per_piece; ++piece) {
      check_aligned(src + piece * per_piece, sizeof(Raw), "vector load");
      check_aligned(dst + piece * per_piece, sizeof(Raw), "vector store");
      store_words(dst + piece * per_piece, *reinterpret_cast<const Raw*>(src + piece * per_piece));
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

inline bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Whether rows starting at `data` with the given element strides allow packs of n elements (accessed in
// pieces of at most 16 bytes).
inline bool packable(const at::Tensor& t, int64_t n, std::initializer_list<int64_t> strides) {
  if (!aligned(t.const_data_ptr(), std::min<int64_t>(16, n * t.element_size()))) return false;
  for (int64_t s : strides) {
    if (s % n != 0) return false;
  }
  return true;
}

// The widest access (in elements, at most 16 bytes) that runs of `run` elements starting at the tensor's data
// and at the given element strides allow.
inline int vector_width(const at::Tensor& t, int64_t run, std::initializer_list<int64_t> strides) {
  for (int n = static_cast<int>(16 / t.element_size()); n > 1; n /= 2) {
    if (run % n == 0 && packable(t, n, strides)) return n;
  }
  return 1;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace fastmim::cuda
