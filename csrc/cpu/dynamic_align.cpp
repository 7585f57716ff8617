// dynamic_align on the CPU: the level-mixing kernel (reads each input level once per column block and
// writes every output level from cache) and the mix-weight gradient reduction of the shared driver.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/dispatch.h"
#include "../common/dynamic_align_driver.h"
#include "simd.h"

namespace fastmim {
namespace {

constexpr int64_t kBlock = 256;  // columns per block: S rows of it stay in L1
constexpr int64_t kLanes = 16;   // columns accumulated together in registers

// kLanes values as one GCC vector: lowered to xmm, ymm or zmm registers by the clone being compiled.
template <typename T>
using Lanes [[gnu::vector_size(kLanes * sizeof(T))]] = T;


// out[l0 + q][c..c+kLanes) for q < Q: Q output levels at once, so each input vector loaded feeds Q
// independent accumulator chains (one chain would wait on the FMA latency at every level).
template <int Q, typename acc_t>
FASTMIM_ALWAYS_INLINE void mix_lanes(const acc_t* const* in, int64_t levels_in, const acc_t* mix, int64_t l0,
                                     acc_t* const* out, int64_t c) {
  Lanes<acc_t> acc[Q] = {};
  for (int64_t s = 0; s < levels_in; ++s) {
    Lanes<acc_t> src;
    __builtin_memcpy(&src, in[s] + c, sizeof(src));
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[q] += mix[(l0 + q) * levels_in + s] * src;
  }
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) __builtin_memcpy(out[l0 + q] + c, &acc[q], sizeof(acc[q]));
}

// out_l[c] = Σ_s mix[l, s] · in_s[c] for c < n: kLanes columns by up to 4 levels per register tile.
template <typename acc_t>
FASTMIM_ALWAYS_INLINE void mix_block(const acc_t* const* in, int64_t levels_in, const acc_t* mix,
                                     int64_t levels_out, acc_t* const* out, int64_t n) {
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    int64_t l = 0;
    for (; l + 4 <= levels_out; l += 4) mix_lanes<4>(in, levels_in, mix, l, out, c);
    for (; l + 2 <= levels_out; l += 2) mix_lanes<2>(in, levels_in, mix, l, out, c);
    for (; l < levels_out; ++l) mix_lanes<1>(in, levels_in, mix, l, out, c);
  }
  for (; c < n; ++c) {
    for (int64_t l = 0; l < levels_out; ++l) {
      acc_t acc = 0;
      for (int64_t s = 0; s < levels_in; ++s) acc += mix[l * levels_in + s] * in[s][c];
      out[l][c] = acc;
    }
  }
}

// The float32 loops, compiled for AVX-512, AVX2 and baseline x86-64, picked at load time (see simd.h).
FASTMIM_CPU_CLONES void mix_block_f32(const float* const* in, int64_t levels_in, const float* mix,
                                      int64_t levels_out, float* const* out, int64_t n) {
  mix_block<float>(in, levels_in, mix, levels_out, out, n);
}

template <typename acc_t>
void mix_block_dispatch(const acc_t* const* in, int64_t levels_in, const acc_t* mix, int64_t levels_out,
                        acc_t* const* out, int64_t n) {
  if constexpr (std::is_same_v<acc_t, float>) {
    mix_block_f32(in, levels_in, mix, levels_out, out, n);
  } else {
    mix_block<acc_t>(in, levels_in, mix, levels_out, out, n);
  }
}

template <typename scalar_t>
void mix_typed(const at::Tensor& in, const at::Tensor& mix, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;  // no conversion buffers needed
  const int64_t levels_in = in.size(0), levels_out = out.size(0), cols = in.size(1);
  const scalar_t* src = in.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const acc_t* w = mix.const_data_ptr<acc_t>();
  const int64_t in_stride = in.stride(0), out_stride = out.stride(0);
  at::parallel_for(0, (cols + kBlock - 1) / kBlock, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(direct ? 0 : (levels_in + levels_out) * kBlock);
    std::vector<const acc_t*> in_rows(levels_in);
    std::vector<acc_t*> out_rows(levels_out);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kBlock, n = std::min(kBlock, cols - c0);
      for (int64_t s = 0; s < levels_in; ++s) {
        const scalar_t* row = src + s * in_stride + c0;
        if constexpr (direct) {
          in_rows[s] = row;
        } else {
          acc_t* converted = buffer.data() + s * kBlock;
          for (int64_t c = 0; c < n; ++c) converted[c] = static_cast<acc_t>(row[c]);
          in_rows[s] = converted;
        }
      }
      for (int64_t l = 0; l < levels_out; ++l) {
        if constexpr (direct) {
          out_rows[l] = dst + l * out_stride + c0;
        } else {
          out_rows[l] = buffer.data() + (levels_in + l) * kBlock;
        }
      }
      mix_block_dispatch<acc_t>(in_rows.data(), levels_in, w, levels_out, out_rows.data(), n);
      if constexpr (!direct) {
        for (int64_t l = 0; l < levels_out; ++l) {
          scalar_t* row = dst + l * out_stride + c0;
          for (int64_t c = 0; c < n; ++c) row[c] = static_cast<scalar_t>(out_rows[l][c]);
        }
      }
    }
  });
}

void mix(const at::Tensor& in, const at::Tensor& mix_weight, at::Tensor& out) {
  FASTMIM_DISPATCH_CPU_FLOATS(in.scalar_type(), "dynamic_align_mix", [&] {
    mix_typed<scalar_t>(in, mix_weight, out);
  });
}

// partial[l, s] += a_l · b_s over a block of n columns (rows already in the accumulation type).
template <typename acc_t>
FASTMIM_ALWAYS_INLINE void dots_block(const acc_t* const* rows, int64_t la, int64_t lb, int64_t n,
                                      acc_t* partial) {
  for (int64_t l = 0; l < la; ++l) {
    for (int64_t s = 0; s < lb; ++s) {
      const acc_t* a = rows[l];
      const acc_t* b = rows[la + s];
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < n; ++c) sum += a[c] * b[c];
      partial[l * lb + s] += sum;
    }
  }
}

FASTMIM_CPU_CLONES void dots_block_f32(const float* const* rows, int64_t la, int64_t lb, int64_t n, float* partial) {
  dots_block<float>(rows, la, lb, n, partial);
}

template <typename acc_t>
void dots_block_dispatch(const acc_t* const* rows, int64_t la, int64_t lb, int64_t n, acc_t* partial) {
  if constexpr (std::is_same_v<acc_t, float>) {
    dots_block_f32(rows, la, lb, n, partial);
  } else {
    dots_block<acc_t>(rows, la, lb, n, partial);
  }
}

// acc[l, s] += Σ_c a[l, c] · b[s, c]: per-thread partial sums over column blocks, added up at the end.
template <typename scalar_t>
void dots_typed(const at::Tensor& a, const at::Tensor& b, at::Tensor& acc) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
  const int64_t la = a.size(0), lb = b.size(0), cols = a.size(1);
  const scalar_t* ap = a.const_data_ptr<scalar_t>();
  const scalar_t* bp = b.const_data_ptr<scalar_t>();
  const int64_t a_stride = a.stride(0), b_stride = b.stride(0);
  const int threads = at::get_num_threads();
  std::vector<acc_t> partial(static_cast<size_t>(threads) * la * lb, acc_t(0));
  at::parallel_for(0, (cols + kBlock - 1) / kBlock, 16, [&](int64_t begin, int64_t end) {
    acc_t* mine = partial.data() + static_cast<int64_t>(at::get_thread_num()) * la * lb;
    std::vector<acc_t> buffer(direct ? 0 : (la + lb) * kBlock);
    std::vector<const acc_t*> rows(la + lb);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kBlock, n = std::min(kBlock, cols - c0);
      for (int64_t i = 0; i < la + lb; ++i) {
        const scalar_t* row = i < la ? ap + i * a_stride + c0 : bp + (i - la) * b_stride + c0;
        if constexpr (direct) {
          rows[i] = row;
        } else {
          acc_t* converted = buffer.data() + i * kBlock;
          for (int64_t c = 0; c < n; ++c) converted[c] = static_cast<acc_t>(row[c]);
          rows[i] = converted;
        }
      }
      dots_block_dispatch<acc_t>(rows.data(), la, lb, n, mine);
    }
  });
  acc_t* out = acc.mutable_data_ptr<acc_t>();
  for (int t = 0; t < threads; ++t) {
    for (int64_t i = 0; i < la * lb; ++i) out[i] += partial[static_cast<int64_t>(t) * la * lb + i];
  }
}

void dots(const at::Tensor& a, const at::Tensor& b, at::Tensor& acc) {
  FASTMIM_DISPATCH_CPU_FLOATS(a.scalar_type(), "dynamic_align_dots", [&] { dots_typed<scalar_t>(a, b, acc); });
}

constexpr DynamicAlignPrimitives kCpu{mix, dots};

at::Tensor forward_cpu(const at::Tensor& hidden, const at::Tensor& mix_weight,
                       const std::optional<at::Tensor>& head_weight, const std::optional<at::Tensor>& head_bias) {
  return dynamic_align_forward(kCpu, hidden, mix_weight, head_weight, head_bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& mix_weight,
    const std::optional<at::Tensor>& head_weight, std::array<bool, 4> output_mask) {
  return dynamic_align_backward(kCpu, grad_out, hidden, mix_weight, head_weight, output_mask);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CPU, m) {
  m.impl("dynamic_align", &fastmim::forward_cpu);
  m.impl("dynamic_align_backward", &fastmim::backward_cpu);
}
