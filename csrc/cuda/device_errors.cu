// fastmim::check_device_errors: reads, clears and reports the index errors the CUDA kernels flagged on a
// device (device_errors.h). Reading the flag synchronizes with the device: call it where the host waits anyway.
#include <torch/library.h>

#include "device_errors.h"
#include "runtime.h"

namespace fastmim {
namespace {

void check_device_errors(const at::Tensor& like) {
  at::Tensor flag = cuda::error_flag(like);
  const int bits = flag.item<int>();
  if (bits == 0) return;
  flag.zero_();
  TORCH_CHECK_INDEX(false, cuda::describe_device_errors(bits), " (found by the kernels on ", like.device(),
                    "; the rows those values indexed were left NaN)");
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(FASTMIM_CUDA_LIBRARY, FASTMIM_CUDA_KEY, m) {
  m.impl("check_device_errors", &fastmim::check_device_errors);
}
