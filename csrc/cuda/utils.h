// Small device helpers shared by the CUDA kernels (included from .cu files only): packed (16-byte) loads
// and stores, warp and block sums, alignment tests, the current stream and the index assertion.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "../common/checks.h"

// The device-side form of FASTMIM_CHECK_INDEX_VALUE: a host check would synchronize every step, so a bad
// index stops the kernel with an assertion whose message names the argument.
#define FASTMIM_DEVICE_CHECK_INDEX(x, value, upper) \
  CUDA_KERNEL_ASSERT_MSG((value) >= 0 && (value) < (upper), #x " holds values outside [0, N)")

namespace fastmim::cuda {

constexpr int kWarp = 32;

// N values of T read or written as one aligned access (16 bytes for 8 halves or 4 floats).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ void load_floats(const T* p, float (&out)[N]) {
  if constexpr (N == 1) {
    out[0] = static_cast<float>(*p);
  } else {
    const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = static_cast<float>(pack.v[i]);
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[N]) {
  if constexpr (N == 1) {
    *p = static_cast<T>(in[0]);
  } else {
    Pack<T, N> pack;
#pragma unroll
    for (int i = 0; i < N; ++i) pack.v[i] = static_cast<T>(in[i]);
    *reinterpret_cast<Pack<T, N>*>(p) = pack;
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

// Whether rows starting at `data` with the given element strides allow packs of n elements.
inline bool packable(const at::Tensor& t, int64_t n, std::initializer_list<int64_t> strides) {
  if (!aligned(t.const_data_ptr(), n * t.element_size())) return false;
  for (int64_t s : strides) {
    if (s % n != 0) return false;
  }
  return true;
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace fastmim::cuda
