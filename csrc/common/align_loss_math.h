// The per-row arithmetic of align_loss, shared by the CPU and CUDA kernels (host and device code alike) so the
// two cannot drift: the row normalization from its sums, the cosine terms, and the chain rule through the
// prediction's normalization. The kernels only differ in how they walk a row and sum over it.
#pragma once

#include <cmath>
#include <cstdint>

#include "index_math.h"

namespace fastmim {

// a / b and √x. On the GPU the approximate forms (2–3 ulp): the IEEE ones are subroutine calls whose register
// saves ptxas reports as spills, and these per-row scalars need no more.
template <typename acc_t>
FASTMIM_HD acc_t divide(acc_t a, acc_t b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);
#else
  return a / b;
#endif
}

template <typename acc_t>
FASTMIM_HD acc_t square_root(acc_t x) {
#if defined(__CUDA_ARCH__)
  return x > 0.0f ? x * rsqrtf(x) : (x == 0.0f ? 0.0f : sqrtf(x));  // sqrtf only for NaN and negatives
#else
  return std::sqrt(x);
#endif
}

template <typename acc_t>
FASTMIM_HD acc_t reciprocal_square_root(acc_t x) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(x);
#else
  return acc_t(1) / std::sqrt(x);
#endif
}

// x̂ = (x - shift) · scale. `clamped`: an l2 row whose norm fell under F.normalize's clamp.
template <typename acc_t>
struct RowScale {
  acc_t shift = 0, scale = 1;
  bool clamped = false;
};

// The normalization of a row of `dim` values from `mean` (layernorm; 0 for l2) and squares, the sum of
// (x - mean)² (layernorm) or of x² (l2).
template <typename acc_t>
FASTMIM_HD RowScale<acc_t> row_scale(RowNorm norm, acc_t mean, acc_t squares, int64_t dim, acc_t eps) {
  RowScale<acc_t> r;
  if (norm == RowNorm::LayerNorm) {
    r.shift = mean;
    r.scale = reciprocal_square_root(divide(squares, static_cast<acc_t>(dim)) + eps);
  } else if (norm == RowNorm::L2) {
    const acc_t n = square_root(squares);
    r.clamped = !(n > acc_t(kL2NormEps));
    r.scale = divide(acc_t(1), r.clamped ? acc_t(kL2NormEps) : n);
  }
  return r;
}

// Sums over a row that the loss and the gradient through the prediction's normalization need.
template <typename acc_t>
struct RowSums {
  acc_t loss = 0, g = 0, gx = 0;  // Σ loss, Σ dℓ/dx̂, Σ dℓ/dx̂ · x̂
};

// Cosine: row loss 1 - cos and dℓ/dx̂ = x̂·b - t̂·a, with a = 1/(|x̂| |t̂|) and b = cos/|x̂|² (norms clamped as
// F.cosine_similarity; a clamped |x̂| counts as a constant, b = 0).
template <typename acc_t>
struct CosineTerms {
  acc_t a = 0, b = 0;
};

// From the row's Σx̂t̂, Σx̂², Σt̂², Σx̂, Σt̂: the row sums, and the terms of the gradient in `terms`.
template <typename acc_t>
FASTMIM_HD RowSums<acc_t> cosine_row(acc_t dot, acc_t xx, acc_t tt, acc_t sx, acc_t st, CosineTerms<acc_t>& terms) {
  const acc_t eps = acc_t(kCosineEps);
  const acc_t nx = square_root(xx), nt = square_root(tt);
  const acc_t cx = nx > eps ? nx : eps, ct = nt > eps ? nt : eps;
  const acc_t cos = divide(dot, cx * ct);
  terms.a = divide(acc_t(1), cx * ct);
  terms.b = nx > eps ? divide(cos, cx * cx) : acc_t(0);
  return {acc_t(1) - cos, sx * terms.b - st * terms.a, xx * terms.b - dot * terms.a};
}

template <typename acc_t>
FASTMIM_HD acc_t cosine_grad(acc_t xh, acc_t th, const CosineTerms<acc_t>& terms) {
  return xh * terms.b - th * terms.a;
}

// dℓ/dx = scale · (dℓ/dx̂ - shift - x̂ · coef): the gradient through the prediction's normalization
// (identity: 1, 0, 0; layernorm: rstd, mean(g), mean(g·x̂); l2: 1/|x|, 0, Σ g·x̂, or 0 when clamped).
template <typename acc_t>
struct NormChain {
  acc_t scale = 1, shift = 0, coef = 0;

  FASTMIM_HD acc_t apply(acc_t g, acc_t xh) const { return scale * (g - shift - xh * coef); }
};

template <typename acc_t>
FASTMIM_HD NormChain<acc_t> norm_chain(RowNorm norm, const RowScale<acc_t>& x, const RowSums<acc_t>& sums,
                                       int64_t dim) {
  NormChain<acc_t> c;
  if (norm == RowNorm::LayerNorm) {
    c.scale = x.scale;
    c.shift = divide(sums.g, static_cast<acc_t>(dim));
    c.coef = divide(sums.gx, static_cast<acc_t>(dim));
  } else if (norm == RowNorm::L2) {
    c.scale = x.scale;
    c.coef = x.clamped ? acc_t(0) : sums.gx;
  }
  return c;
}

}  // namespace fastmim
