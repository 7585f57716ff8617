// masked_pixel_loss on the CPU: one task per block of predicted patches; each patch's target pixels are read
// from the image into a per-thread buffer in (p, q, c) order, normalized, and compared with the prediction in
// the same pass that writes its gradient.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/dispatch.h"
#include "../common/masked_pixel_loss_driver.h"
#include "simd.h"

namespace fastmim {
namespace {

template <typename scalar_t, typename image_t>
struct PixelTask {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* pred;
  const image_t* images;
  const int64_t* ids;
  acc_t* losses;
  acc_t* grad;  // null: loss only
  PatchGeometry g;
  int64_t rows_per_sample, numel, ps0, ps1;
  bool norm_pix;
  acc_t eps, two_inv_count;
};

// Σ (x - t̂)² over one patch and, when asked, its gradient; `target` holds the patch in (p, q, c) order.
template <typename acc_t, typename scalar_t>
FASTMIM_ALWAYS_INLINE acc_t compare_row(const scalar_t* x, const acc_t* target, int64_t numel, acc_t shift,
                                        acc_t scale, acc_t two_inv_count, acc_t* grad) {
  acc_t loss = 0;
  if (grad == nullptr) {
#pragma omp simd reduction(+ : loss)
    for (int64_t k = 0; k < numel; ++k) {
      const acc_t diff = static_cast<acc_t>(x[k]) - (target[k] - shift) * scale;
      loss += diff * diff;
    }
    return loss;
  }
#pragma omp simd reduction(+ : loss)
  for (int64_t k = 0; k < numel; ++k) {
    const acc_t diff = static_cast<acc_t>(x[k]) - (target[k] - shift) * scale;
    loss += diff * diff;
    grad[k] = diff * two_inv_count;
  }
  return loss;
}

// The patch's pixels into `target` in (p, q, c) order, a line (c, i) of p pixels at a time: no index division.
template <typename acc_t, typename image_t>
FASTMIM_ALWAYS_INLINE void read_patch(const image_t* patch, const PatchGeometry& g, acc_t* target) {
  const int64_t p = g.patch, channels = g.channels;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < p; ++i) {
      const image_t* line = patch + c * g.stride_c + i * g.stride_h;
      acc_t* out = target + i * p * channels + c;
      for (int64_t j = 0; j < p; ++j) out[j * channels] = static_cast<acc_t>(line[j * g.stride_w]);
    }
  }
}

// (shift, scale) of MAE's norm_pix over the patch: mean, and 1 / √(unbiased var + eps).
template <typename acc_t>
FASTMIM_ALWAYS_INLINE void patch_norm(const acc_t* target, int64_t numel, acc_t eps, acc_t& shift, acc_t& scale) {
  acc_t sum = 0, squares = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t e = 0; e < numel; ++e) sum += target[e];
  shift = sum / numel;
#pragma omp simd reduction(+ : squares)
  for (int64_t e = 0; e < numel; ++e) squares += (target[e] - shift) * (target[e] - shift);
  scale = pixel_norm_scale(squares, numel, eps);
}

template <typename scalar_t, typename image_t>
FASTMIM_ALWAYS_INLINE void process_rows(const PixelTask<scalar_t, image_t>& k, int64_t begin, int64_t end,
                                        at::opmath_type<scalar_t>* target) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / k.rows_per_sample, n = k.ids[r];  // in range: checked by forward_cpu
    read_patch(k.images + k.g.patch_origin(b, n), k.g, target);
    acc_t shift = 0, scale = 1;
    if (k.norm_pix) patch_norm(target, k.numel, k.eps, shift, scale);
    const scalar_t* x = k.pred + b * k.ps0 + (r - b * k.rows_per_sample) * k.ps1;
    acc_t* grad = k.grad == nullptr ? nullptr : k.grad + r * k.numel;
    k.losses[r] = compare_row(x, target, k.numel, shift, scale, k.two_inv_count, grad);
  }
}

// float32 patches, the common case, compiled for AVX-512, AVX2 and baseline x86-64 (simd.h).
FASTMIM_CPU_CLONES void process_rows_f32(const PixelTask<float, float>& k, int64_t begin, int64_t end, float* target) {
  process_rows(k, begin, end, target);
}

template <typename scalar_t, typename image_t>
void rows_typed(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& ids, const PixelLossShape& s,
                const PixelLossOptions& o, at::Tensor& row_loss, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const PatchEmbedShape patch_shape{s.batch, s.channels, s.rows, 0, s.patch, s.grid_h, s.grid_w, false};
  const PixelTask<scalar_t, image_t> k{pred.const_data_ptr<scalar_t>(), images.const_data_ptr<image_t>(),
                                       ids.const_data_ptr<int64_t>(), row_loss.mutable_data_ptr<acc_t>(),
                                       grad.defined() ? grad.mutable_data_ptr<acc_t>() : nullptr,
                                       patch_geometry(images, patch_shape), s.rows, s.numel(),
                                       pred.stride(0), pred.stride(1), o.norm_pix, static_cast<acc_t>(o.eps),
                                       static_cast<acc_t>(2 * o.inv_count)};
  at::parallel_for(0, s.batch * s.rows, std::max<int64_t>(1, 16384 / s.numel()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> target(s.numel());
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<image_t, float>) {
      process_rows_f32(k, begin, end, target.data());
    } else {
      process_rows(k, begin, end, target.data());
    }
  });
}

void rows(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& ids, const PixelLossShape& s,
          const PixelLossOptions& o, at::Tensor& row_loss, at::Tensor& grad) {
  FASTMIM_DISPATCH_CPU_FLOATS(pred.scalar_type(), "masked_pixel_loss", [&] {
    using pred_t = scalar_t;
    FASTMIM_DISPATCH_CPU_FLOATS(images.scalar_type(), "masked_pixel_loss", [&] {
      rows_typed<pred_t, scalar_t>(pred, images, ids, s, o, row_loss, grad);
    });
  });
}

constexpr PixelLossPrimitives kCpu{rows};

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& ids,
                                               int64_t patch_size, bool norm_pix, double eps, bool with_grad) {
  const PixelLossShape s = check_masked_pixel_loss(pred, images, ids, patch_size, eps);
  check_index_values(ids, s.num_patches(), "ids");
  return masked_pixel_loss_forward(kCpu, pred, images, ids, patch_size, norm_pix, eps, with_grad);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CPU, m) { m.impl("masked_pixel_loss", &fastmim::forward_cpu); }
