// What the CUDA kernels need from their compiler and runtime, spelled once for the two ways the same .cu
// sources are built: by nvcc for the GPU (the `fastmim` library, CUDA dispatch key), and by g++ against the
// SIMT emulation (FASTMIM_SIMT_EMULATION: the test-only `fastmim_emulated` library, CPU dispatch key, CPU
// tensors). Nothing else in the kernels differs between the two.
//
//   FASTMIM_LAUNCH(kernel, grid, block, smem, stream)(args...)   a launch; parenthesize a template kernel:
//                                                                 FASTMIM_LAUNCH((k<float, 4>), ...)
//   FASTMIM_LAUNCH_CHECK()                                       after a launch
//   FASTMIM_SHARED(type, name, count);                           a static __shared__ array
//   FASTMIM_DYNAMIC_SHARED(type, name);                          the dynamic shared memory
//   FASTMIM_DEVICE_ASSERT(condition, message)                    an assertion inside a kernel
//   FASTMIM_CUDA_LIBRARY, FASTMIM_CUDA_KEY                       where the kernels register
//   cuda::stream(), cuda::max_grid_y(), cuda::check_aligned()
#pragma once

#include <cstdint>

#if defined(FASTMIM_SIMT_EMULATION)

#include "../emulation/simt.h"

#define FASTMIM_CUDA_LIBRARY fastmim_emulated
#define FASTMIM_CUDA_KEY CPU
#define FASTMIM_LAUNCH(kernel, grid, block, smem, stream) \
  ((void)(stream), ::fastmim::simt::launch(kernel, grid, block, smem, #kernel))
#define FASTMIM_LAUNCH_CHECK() ((void)0)
#define FASTMIM_SHARED(type, name, count) \
  static const char name##_tag = 0;       \
  type* const name = ::fastmim::simt::static_shared<type>(&name##_tag, count)
#define FASTMIM_DYNAMIC_SHARED(type, name) type* const name = ::fastmim::simt::dynamic_shared<type>()
#define FASTMIM_DEVICE_ASSERT(condition, message) \
  ((condition) ? (void)0 : ::fastmim::simt::device_assert_failed(#condition, message, __FILE__, __LINE__))

namespace fastmim::cuda {
using Stream = int;
inline Stream stream() { return 0; }
// The emulation's limit, which tests lower to run the kernels' loops over grid rows on small inputs.
inline unsigned max_grid_y() { return simt::limits().max_grid_y; }
inline void check_aligned(const void* p, int bytes, const char* what) { simt::check_aligned(p, bytes, what); }
}  // namespace fastmim::cuda

#else

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

#define FASTMIM_CUDA_LIBRARY fastmim
#define FASTMIM_CUDA_KEY CUDA
#define FASTMIM_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define FASTMIM_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define FASTMIM_SHARED(type, name, count) __shared__ type name[count]
#define FASTMIM_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define FASTMIM_DEVICE_ASSERT(condition, message) CUDA_KERNEL_ASSERT_MSG(condition, message)

namespace fastmim::cuda {
using Stream = cudaStream_t;
inline Stream stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
constexpr unsigned max_grid_y() { return 65535; }
__device__ __forceinline__ void check_aligned(const void*, int, const char*) {}
}  // namespace fastmim::cuda

#endif
