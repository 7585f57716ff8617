// fastmim::cuda_kernel_version: whether this library holds code that runs on a tensor's GPU. A library
// compiled for other architectures fails at its first launch there; `--kernels auto` asks first.
#include <torch/library.h>

#include "runtime.h"

#if !defined(FASTMIM_SIMT_EMULATION)  // a question about the CUDA runtime, which the emulation has not

#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

namespace fastmim {
namespace {

__global__ void probe_kernel() {}

// The kernels' SASS version for the device (e.g. 90), the PTX version when they would be JIT-compiled from
// PTX instead (reported negative, e.g. -120), or 0 when the library holds nothing that runs there.
int64_t cuda_kernel_version(const at::Tensor& like) {
  TORCH_CHECK_VALUE(like.is_cuda(), "like must be a CUDA tensor, got one on ", like.device());
  const c10::cuda::CUDAGuard guard(like.device());
  cudaFuncAttributes attributes{};
  const cudaError_t status = cudaFuncGetAttributes(&attributes, probe_kernel);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: the error is the answer, not a failure of the process
    return 0;
  }
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, like.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, like.get_device()));
  const int device = 10 * major + minor, sass = attributes.binaryVersion;
  // SASS runs on the same major version at an equal or higher minor; anything else was JIT-compiled from PTX.
  return sass / 10 == device / 10 && sass <= device ? sass : -attributes.ptxVersion;
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CUDA, m) { m.impl("cuda_kernel_version", &fastmim::cuda_kernel_version); }

#endif
