// masked_pixel_loss on CUDA: one warp per predicted patch. The warp reads the patch's pixels from the image
// along its lines (consecutive lanes, consecutive pixels), sums them, their squared deviations, and the
// squared errors against the prediction in three passes (re-read from L1), and writes the gradient.
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../common/dispatch.h"
#include "../common/masked_pixel_loss_driver.h"
#include "utils.h"

namespace fastmim {
namespace {

using cuda::kWarp;
using cuda::warp_sum;

constexpr int kWarpsPerBlock = 8;

struct PixelArgs {
  PatchGeometry g;
  int rows, rows_per_sample, numel, n_patches, channels, patch;
  int64_t ps0, ps1;
  bool norm_pix;
  float eps, two_inv_count;
};

template <typename pred_t, typename image_t>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock) rows_kernel(const pred_t* __restrict__ pred,
                                                                     const image_t* __restrict__ images,
                                                                     const int64_t* __restrict__ ids, PixelArgs a,
                                                                     float* __restrict__ row_loss,
                                                                     float* __restrict__ grad,
                                                                     int* __restrict__ errors) {
  // No lane leaves before the last shuffle (see align_loss.cu): a warp past the last patch works on the last
  // one and writes nothing; an out-of-range index reads patch 0 and is flagged (NaN loss, zero gradient).
  const int lane = threadIdx.x % kWarp;
  const int r = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  const bool live = r < a.rows;
  const int row = live ? r : a.rows - 1;
  const int b = row / a.rows_per_sample;
  const int64_t wanted = ids[row];
  const bool bad = wanted < 0 || wanted >= a.n_patches;
  float* out = grad == nullptr || !live ? nullptr : grad + static_cast<int64_t>(r) * a.numel;
  const image_t* patch = images + a.g.patch_origin(b, static_cast<int>(bad ? 0 : wanted));
  const pred_t* x = pred + b * a.ps0 + (row - b * a.rows_per_sample) * a.ps1;
  float shift = 0.0f, scale = 1.0f;
  if (a.norm_pix) {
    float sum = 0.0f;
    for (int e = lane; e < a.numel; e += kWarp) sum += static_cast<float>(patch[a.g.pixel_offset(e)]);
    shift = divide(warp_sum(sum), static_cast<float>(a.numel));
    float squares = 0.0f;
    for (int e = lane; e < a.numel; e += kWarp) {
      const float t = static_cast<float>(patch[a.g.pixel_offset(e)]) - shift;
      squares += t * t;
    }
    scale = pixel_norm_scale(warp_sum(squares), a.numel, a.eps);
  }
  float loss = 0.0f;
  for (int e = lane; e < a.numel; e += kWarp) {
    const int k = pqc_position(e, a.patch, a.channels);
    const float diff = static_cast<float>(x[k]) - (static_cast<float>(patch[a.g.pixel_offset(e)]) - shift) * scale;
    loss += diff * diff;
    if (out != nullptr) out[k] = bad ? 0.0f : diff * a.two_inv_count;
  }
  loss = warp_sum(loss);
  if (lane == 0 && live) {
    row_loss[r] = bad ? NAN : loss;
    if (bad) atomicOr(errors, static_cast<int>(cuda::kMaskedPixelLossIds));
  }
}

void rows(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& ids, const PixelLossShape& s,
          const PixelLossOptions& o, at::Tensor& row_loss, at::Tensor& grad) {
  constexpr int64_t limit = std::numeric_limits<int>::max();
  TORCH_CHECK_VALUE(s.batch * s.rows < limit && s.numel() < limit && s.num_patches() < limit,
                    "pred and ids are too large for the CUDA kernel (", s.batch * s.rows, " patches)");
  const PatchEmbedShape patch_shape{s.batch, s.channels, s.rows, 0, s.patch, s.grid_h, s.grid_w, false};
  const PixelArgs a{patch_geometry(images, patch_shape), static_cast<int>(s.batch * s.rows),
                    static_cast<int>(s.rows), static_cast<int>(s.numel()), static_cast<int>(s.num_patches()),
                    static_cast<int>(s.channels), static_cast<int>(s.patch), pred.stride(0), pred.stride(1),
                    o.norm_pix, static_cast<float>(o.eps), static_cast<float>(2 * o.inv_count)};
  const dim3 grid(static_cast<unsigned>(cuda::ceil_div(s.batch * s.rows, kWarpsPerBlock)));
  FASTMIM_DISPATCH_CUDA_FLOATS(pred.scalar_type(), "masked_pixel_loss", [&] {
    using pred_t = scalar_t;
    FASTMIM_DISPATCH_CUDA_FLOATS(images.scalar_type(), "masked_pixel_loss", [&] {
      FASTMIM_LAUNCH((rows_kernel<pred_t, scalar_t>), grid, kWarp * kWarpsPerBlock, 0, cuda::stream())(
          pred.const_data_ptr<pred_t>(), images.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), a,
          row_loss.mutable_data_ptr<float>(), grad.defined() ? grad.mutable_data_ptr<float>() : nullptr,
          cuda::error_flag_ptr(pred));
      FASTMIM_LAUNCH_CHECK();
    });
  });
}

constexpr PixelLossPrimitives kCuda{rows};

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& ids,
                                                int64_t patch_size, bool norm_pix, double eps, bool with_grad) {
  FASTMIM_CHECK_CUDA_FLOATING(pred);
  FASTMIM_CHECK_CUDA_FLOATING(images);
  return masked_pixel_loss_forward(kCuda, pred, images, ids, patch_size, norm_pix, eps, with_grad);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(FASTMIM_CUDA_LIBRARY, FASTMIM_CUDA_KEY, m) {
  m.impl("masked_pixel_loss", &fastmim::forward_cuda);
}
