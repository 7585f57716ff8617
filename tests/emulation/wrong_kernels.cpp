// Small CUDA kernels, most of them deliberately wrong, built into the emulation library so that its tests can
// show each check of csrc/emulation/simt.h (and of ASan/UBSan) firing — and, with the correct ones, that the
// checks do not fire on good code. They use the project's own kernel helpers and launch macro.
//
//   torch.ops.fastmim_simt_selftest.run(case, x) -> Tensor      x: a float32 CPU tensor of 64 values
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <string>

#include "cuda/utils.h"

namespace {

using fastmim::cuda::block_sum;
using fastmim::cuda::load_floats;
using fastmim::cuda::warp_sum;

// Correct: a warp sum and a block sum over 64 threads, written by thread 0 of each block.
__global__ void sums_kernel(const float* x, float* out) {
  FASTMIM_SHARED(float, scratch, 2);
  const float v = x[threadIdx.x];
  const float warp = warp_sum(v), block = block_sum(v, scratch);
  if (threadIdx.x == 0) out[0] = block;
  if (threadIdx.x == 32) out[1] = warp;  // the second warp's sum
}

// Reads one float past the end of x.
__global__ void out_of_bounds_kernel(const float* x, float* out, int n) {
  if (threadIdx.x == 0) out[0] = x[n];
}

// A 4-float vector load from x + 1: 4-byte aligned, not 16.
__global__ void misaligned_load_kernel(const float* x, float* out) {
  float v[4];
  load_floats<4>(x + 1, v);
  out[threadIdx.x] = v[0];
}

// The same, as a raw typed access (what UBSan's alignment check sees).
struct alignas(16) Four {
  float v[4];
};
__global__ void misaligned_raw_kernel(const float* x, float* out) {
  const Four f = *reinterpret_cast<const Four*>(x + 1);
  out[threadIdx.x] = f.v[0];
}

// Lane 31 leaves before the warp sum that names it in its full mask.
__global__ void exited_lane_kernel(const float* x, float* out) {
  if (threadIdx.x == 31) return;
  out[threadIdx.x] = warp_sum(x[threadIdx.x]);
}

// Thread 0 leaves before a __syncthreads the others wait at.
__global__ void barrier_kernel(const float* x, float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = x[threadIdx.x];
}

// Any correct kernel, launched with an impossible grid or block.
__global__ void copy_kernel(const float* x, float* out) { out[threadIdx.x % 64] = x[threadIdx.x % 64]; }

__global__ void assert_kernel(const float* x, float* out) {
  FASTMIM_DEVICE_ASSERT(x[threadIdx.x] >= 0.0f, "x must be non-negative");
  out[threadIdx.x] = x[threadIdx.x];
}

// Reads shared memory no thread wrote.
__global__ void unwritten_shared_kernel(const float*, float* out) {
  FASTMIM_DYNAMIC_SHARED(float, staged);
  out[threadIdx.x] = staged[threadIdx.x];
}

// Records the order the blocks ran in.
__global__ void block_order_kernel(const float*, float* out, int* next) {
  if (threadIdx.x == 0) out[atomicAdd(next, 1)] = static_cast<float>(blockIdx.x);
}

at::Tensor run(c10::string_view name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.numel() == 64 && x.is_contiguous(),
                    "x must be 64 contiguous float32 values");
  const std::string which(name);
  const float* in = x.const_data_ptr<float>();
  at::Tensor out = at::full({64}, -1.0f, x.options());
  float* o = out.mutable_data_ptr<float>();
  const auto stream = fastmim::cuda::stream();
  if (which == "sums") {
    FASTMIM_LAUNCH(sums_kernel, 1, 64, 0, stream)(in, o);
  } else if (which == "out_of_bounds") {
    FASTMIM_LAUNCH(out_of_bounds_kernel, 1, 32, 0, stream)(in, o, 64);
  } else if (which == "misaligned_load") {
    FASTMIM_LAUNCH(misaligned_load_kernel, 1, 32, 0, stream)(in, o);
  } else if (which == "misaligned_raw") {
    FASTMIM_LAUNCH(misaligned_raw_kernel, 1, 32, 0, stream)(in, o);
  } else if (which == "exited_lane") {
    FASTMIM_LAUNCH(exited_lane_kernel, 1, 32, 0, stream)(in, o);
  } else if (which == "barrier") {
    FASTMIM_LAUNCH(barrier_kernel, 1, 64, 0, stream)(in, o);
  } else if (which == "grid_y") {
    FASTMIM_LAUNCH(copy_kernel, dim3(1, 65536), 32, 0, stream)(in, o);
  } else if (which == "block_size") {
    FASTMIM_LAUNCH(copy_kernel, 1, 2048, 0, stream)(in, o);
  } else if (which == "shared_limit") {
    FASTMIM_LAUNCH(unwritten_shared_kernel, 1, 32, 64 * 1024, stream)(in, o);
  } else if (which == "assert") {
    FASTMIM_LAUNCH(assert_kernel, 1, 64, 0, stream)(in, o);
  } else if (which == "unwritten_shared") {
    FASTMIM_LAUNCH(unwritten_shared_kernel, 1, 64, 64 * sizeof(float), stream)(in, o);
  } else if (which == "block_order") {
    at::Tensor next = at::zeros({1}, x.options().dtype(at::kInt));
    FASTMIM_LAUNCH(block_order_kernel, 64, 32, 0, stream)(in, o, next.mutable_data_ptr<int>());
  } else {
    TORCH_CHECK_VALUE(false, "unknown case '", which, "'");
  }
  FASTMIM_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(fastmim_simt_selftest, m) { m.def("run(str name, Tensor x) -> Tensor", &run); }
