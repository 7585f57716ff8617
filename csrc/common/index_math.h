// Index math and per-element formulas shared by the CPU and CUDA kernels (host and device code alike), so
// both backends agree on patch layout, target rows and loss derivatives by construction.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTMIM_HD __host__ __device__ __forceinline__
#else
#define FASTMIM_HD inline
#endif

namespace fastmim {

// Where pixel e of patch n of sample b lies in the image. n is the row-major patch index on the
// (H/p) x (W/p) grid. e runs over (c, i, j), the order of the flattened Conv2d weight [D, C, p, p] — or, with
// `channels_inner`, over (i, j, c), the order of the weight permuted to [D, p, p, C]: a channels-last image
// then holds each of the p lines of a patch as one contiguous run of p·C values instead of p·C runs of one.
// A line is the run of consecutive e at a single stride (`step`): p pixels (c, i fixed) or p·C values (i fixed).
// The divisions run in index_t: device code passes int (64-bit division is a slow subroutine on GPUs).
struct PatchGeometry {
  int64_t patch;      // p
  int64_t grid_w;     // W / p
  int64_t channels;   // C
  int64_t stride_b, stride_c, stride_h, stride_w;  // image strides in elements
  bool channels_inner;

  FASTMIM_HD int64_t line_length() const { return channels_inner ? patch * channels : patch; }
  FASTMIM_HD int64_t lines() const { return channels_inner ? patch : patch * channels; }
  FASTMIM_HD int64_t step() const { return channels_inner ? stride_c : stride_w; }

  template <typename index_t>
  FASTMIM_HD int64_t patch_origin(int64_t b, index_t n) const {
    const index_t gw = static_cast<index_t>(grid_w);
    const index_t gy = n / gw, gx = n - gy * gw;
    return b * stride_b + gy * patch * stride_h + gx * patch * stride_w;
  }
  template <typename index_t>
  FASTMIM_HD int64_t line_origin(index_t line) const {  // relative to patch_origin
    if (channels_inner) return line * stride_h;
    const index_t p = static_cast<index_t>(patch);
    const index_t c = line / p;
    return c * stride_c + (line - c * p) * stride_h;
  }
  template <typename index_t>
  FASTMIM_HD int64_t pixel_offset(index_t e) const {  // relative to patch_origin
    const index_t length = static_cast<index_t>(line_length());
    const index_t line = e / length;
    return line_origin(line) + (e - line * length) * step();
  }
};

// masked_pixel_loss: MAE's patch targets list a patch's values in (p, q, c) order — row i, column j, channel c
// innermost. The kernels walk a patch in the image's (c, i, j) order (PatchGeometry, consecutive j adjacent in
// memory) and find each pixel's place in the prediction row here.
template <typename index_t>
FASTMIM_HD index_t pqc_position(index_t e, index_t patch, index_t channels) {
  const index_t pp = patch * patch;
  const index_t c = e / pp;
  return (e - c * pp) * channels + c;
}

// align_loss: prediction row j of sample b is compared with target row rows[b, j] (R rows per sample).
FASTMIM_HD int64_t target_row(const int64_t* rows, int64_t b, int64_t j, int64_t per_sample) {
  return rows[b * per_sample + j];
}

enum class LossKind : int { SmoothL1 = 0, L2 = 1, L1 = 2, Cosine = 3 };
enum class RowNorm : int { LayerNorm = 0, L2 = 1, None = 2 };

// Per-element loss of d = prediction - target, and its derivative with respect to the prediction, written
// as min/max arithmetic rather than branches so that CPU loops vectorize. smooth_l1 follows
// F.smooth_l1_loss with inv_beta = 1 / beta; beta = 0 (plain l1) is dispatched to L1 by the callers.
template <typename acc_t>
FASTMIM_HD acc_t min_of(acc_t a, acc_t b) { return a < b ? a : b; }
template <typename acc_t>
FASTMIM_HD acc_t max_of(acc_t a, acc_t b) { return a > b ? a : b; }

template <typename acc_t>
FASTMIM_HD acc_t element_loss(LossKind kind, acc_t d, acc_t beta, acc_t inv_beta) {
  const acc_t a = max_of(d, -d);
  if (kind == LossKind::SmoothL1) {
    const acc_t m = min_of(a, beta);  // quadratic up to beta, linear beyond
    return acc_t(0.5) * inv_beta * m * m + (a - m);
  }
  return kind == LossKind::L2 ? d * d : a;
}

template <typename acc_t>
FASTMIM_HD acc_t element_grad(LossKind kind, acc_t d, acc_t beta, acc_t inv_beta) {
  if (kind == LossKind::SmoothL1) return max_of(acc_t(-1), min_of(acc_t(1), d * inv_beta));
  if (kind == LossKind::L2) return acc_t(2) * d;
  return acc_t(d > acc_t(0)) - acc_t(d < acc_t(0));  // sign, 0 at 0 as torch's abs backward
}

// Norm clamps of the references: F.normalize (l2 rows) and F.cosine_similarity.
constexpr double kL2NormEps = 1e-12;
constexpr double kCosineEps = 1e-8;

// Level of flat element i of a [L, rows, D] tensor, the per-level scale of the loss backward.
FASTMIM_HD int64_t level_of(int64_t i, int64_t level_numel) { return i / level_numel; }

}  // namespace fastmim
