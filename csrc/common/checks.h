// Argument checks shared by the CPU and CUDA kernels. Each macro takes the argument itself and names it in
// the message (#x), so a caller from C++ or Python learns which argument to fix. The exception types match
// fastmim/ops/_checks.py: ValueError for ranks and shapes, TypeError for dtypes, IndexError for indices.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>

#include <string_view>

#define FASTMIM_CHECK_DIM(x, n)                                                                          \
  TORCH_CHECK_VALUE((x).dim() == (n), #x " must have " #n " dimensions, got shape ", (x).sizes())

#define FASTMIM_CHECK_SIZE(x, d, expected)                                                               \
  TORCH_CHECK_VALUE((x).size(d) == (expected), #x " must have size ", (expected), " in dimension ", (d), \
                    ", got shape ", (x).sizes())

#define FASTMIM_CHECK_FLOATING(x)                                                                        \
  TORCH_CHECK_TYPE(::fastmim::is_supported_float((x).scalar_type()),                                     \
                   #x " must be float64/float32/bfloat16/float16, got ", (x).scalar_type())

#define FASTMIM_CHECK_CUDA_FLOATING(x)                                                                   \
  TORCH_CHECK_TYPE(::fastmim::is_cuda_float((x).scalar_type()),                                          \
                   #x " must be float32/bfloat16/float16 on CUDA, got ", (x).scalar_type())

#define FASTMIM_CHECK_SAME_DTYPE(x, ref)                                                                 \
  TORCH_CHECK_TYPE((x).scalar_type() == (ref).scalar_type(), #x " must have the dtype of " #ref " (",    \
                   (ref).scalar_type(), "), got ", (x).scalar_type())

#define FASTMIM_CHECK_SAME_DEVICE(x, ref)                                                                \
  TORCH_CHECK_VALUE((x).device() == (ref).device(), #x " is on ", (x).device(), " but " #ref " is on ",  \
                    (ref).device())

#define FASTMIM_CHECK_INDEX_TENSOR(x)                                                                    \
  TORCH_CHECK_TYPE((x).scalar_type() == at::kLong, #x " must be int64, got ", (x).scalar_type())

// Index values are checked where they are read: on the CPU as an exception naming the argument, on the GPU
// as a device assertion whose text names it (a host check there would synchronize every step).
#define FASTMIM_CHECK_INDEX_VALUE(x, value, upper)                                                       \
  TORCH_CHECK_INDEX((value) >= 0 && (value) < (upper), #x " holds values outside [0, ", (upper),         \
                    "): found ", (value))

namespace fastmim {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

inline bool is_cuda_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// Every value of a CPU index tensor in [0, upper), checked before a kernel runs: an exception thrown from inside
// the vectorized clones of simd.h is not reliably unwound (seen: std::terminate from the AVX-512 clone).
inline void check_index_values(const at::Tensor& ids, int64_t upper, const char* name) {
  if (ids.numel() == 0) return;
  const auto [low, high] = at::aminmax(ids);
  const int64_t lo = low.item<int64_t>(), hi = high.item<int64_t>();
  TORCH_CHECK_INDEX(lo >= 0 && hi < upper, name, " holds values outside [0, ", upper, "): found ", lo < 0 ? lo : hi);
}

inline void check_optional_device(const std::optional<at::Tensor>& t, const at::Tensor& ref,
                                  const char* name, const char* ref_name) {
  if (t.has_value()) {
    TORCH_CHECK_VALUE(t->device() == ref.device(), name, " is on ", t->device(), " but ", ref_name,
                      " is on ", ref.device());
  }
}

}  // namespace fastmim
