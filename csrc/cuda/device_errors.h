// Bad index values found by the CUDA kernels. A host-side check would synchronize every step and a device
// assertion kills the process's CUDA context, so a kernel that reads an out-of-range index instead sets a bit
// in a per-device flag, leaves its output rows NaN (or its gradient rows alone) and reads nothing out of
// bounds. The flag is read, reported as an IndexError naming the op and the argument, and cleared by
// `fastmim::check_device_errors` (fastmim.ops.check_device_errors), which the trainer calls where it
// synchronizes anyway.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <map>
#include <mutex>
#include <string>

namespace fastmim::cuda {

enum DeviceError : int {
  kMaskedPatchEmbedIds = 1,   // masked_patch_embed: ids_keep
  kAlignLossRows = 2,         // align_loss: rows
  kMaskedPixelLossIds = 4,    // masked_pixel_loss: ids
};

// What each bit names, for the error message.
inline std::string describe_device_errors(int bits) {
  std::string out;
  auto add = [&](int bit, const char* what) {
    if (bits & bit) out += std::string(out.empty() ? "" : "; ") + what;
  };
  add(kMaskedPatchEmbedIds, "masked_patch_embed: ids_keep holds values outside [0, N)");
  add(kAlignLossRows, "align_loss: rows holds values outside [0, T)");
  add(kMaskedPixelLossIds, "masked_pixel_loss: ids holds values outside [0, N)");
  return out;
}

// The int32 flag of the tensor's device, created on first use and kept for the life of the process (never
// freed: static destructors may run after the CUDA runtime is gone).
inline at::Tensor error_flag(const at::Tensor& like) {
  static std::mutex mutex;
  static auto* flags = new std::map<std::string, at::Tensor>();
  const std::lock_guard<std::mutex> lock(mutex);
  const std::string key = like.device().str();
  auto found = flags->find(key);
  if (found == flags->end()) {
    found = flags->emplace(key, at::zeros({1}, like.options().dtype(at::kInt))).first;
  }
  return found->second;
}

inline int* error_flag_ptr(const at::Tensor& like) { return error_flag(like).mutable_data_ptr<int>(); }

}  // namespace fastmim::cuda
