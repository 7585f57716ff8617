// Dtype dispatch: the CPU kernels take float64 too (for gradcheck); the CUDA kernels take the training
// dtypes. Both accumulate in at::opmath_type<scalar_t> (float, or double for double).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#define FASTMIM_DISPATCH_CPU_FLOATS(TYPE, NAME, ...)                                                     \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kDouble, __VA_ARGS__)                              \
                                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                           \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)                    \
                                             AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

#define FASTMIM_DISPATCH_CUDA_FLOATS(TYPE, NAME, ...)                                                    \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                               \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)                        \
                                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))
