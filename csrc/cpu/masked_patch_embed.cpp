// masked_patch_embed on the CPU: the gather, row-reduction and scatter primitives of the shared driver.
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/dispatch.h"
#include "../common/masked_patch_embed_driver.h"

namespace fastmim {
namespace {

// Rows of at least ~32k elements per task, so a thread's work outweighs its start-up.
int64_t row_grain(int64_t row_numel) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_numel)); }

template <typename scalar_t>
void gather_typed(const at::Tensor& images, const at::Tensor& ids_keep, const PatchEmbedShape& s,
                  at::Tensor& patches, const at::Tensor& bias, const at::Tensor& pos_embed, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const PatchGeometry g = patch_geometry(images, s);
  const scalar_t* src = images.const_data_ptr<scalar_t>();
  const int64_t* ids = ids_keep.const_data_ptr<int64_t>();
  scalar_t* dst = patches.mutable_data_ptr<scalar_t>();
  const scalar_t* bias_p = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* pos_p = pos_embed.defined() ? pos_embed.const_data_ptr<scalar_t>() : nullptr;
  const int64_t bias_stride = bias.defined() ? bias.stride(0) : 0;
  const int64_t pos_s0 = pos_embed.defined() ? pos_embed.stride(0) : 0;
  const int64_t pos_s1 = pos_embed.defined() ? pos_embed.stride(1) : 0;
  scalar_t* out_p = out.defined() ? out.mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t numel = s.patch_numel(), n_patches = s.num_patches();
  const int64_t length = g.line_length(), lines = g.lines(), step = g.step();
  at::parallel_for(0, s.batch * s.kept, row_grain(numel), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = ids[r];
      FASTMIM_CHECK_INDEX_VALUE(ids_keep, n, n_patches);
      const scalar_t* patch = src + g.patch_origin(r / s.kept, n);
      scalar_t* row = dst + r * numel;
      for (int64_t line = 0; line < lines; ++line) {  // p pixels per (c, i), or p·C values per i
        const scalar_t* pixels = patch + g.line_origin(line);
        scalar_t* dst_line = row + line * length;
        if (step == 1) {
          std::copy(pixels, pixels + length, dst_line);
        } else {
          for (int64_t j = 0; j < length; ++j) dst_line[j] = pixels[j * step];
        }
      }
      if (out_p == nullptr) continue;
      scalar_t* o = out_p + r * s.dim;
      for (int64_t d = 0; d < s.dim; ++d) {
        acc_t v = 0;
        if (bias_p) v += static_cast<acc_t>(bias_p[d * bias_stride]);
        if (pos_p) v += static_cast<acc_t>(pos_p[n * pos_s0 + d * pos_s1]);
        o[d] = static_cast<scalar_t>(v);
      }
    }
  });
}

void gather(const at::Tensor& images, const at::Tensor& ids_keep, const PatchEmbedShape& s, at::Tensor& patches,
            const at::Tensor& bias, const at::Tensor& pos_embed, at::Tensor& out) {
  FASTMIM_DISPATCH_CPU_FLOATS(images.scalar_type(), "masked_patch_embed_gather", [&] {
    gather_typed<scalar_t>(images, ids_keep, s, patches, bias, pos_embed, out);
  });
}

// Each task owns a range of columns over all rows: no two tasks touch the same accumulator.
template <typename scalar_t>
void reduce_rows_typed(const at::Tensor& grad, const at::Tensor& ids_keep, const PatchEmbedShape& s,
                       at::Tensor& grad_bias, at::Tensor& grad_pos) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_options = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor bias_acc = grad_bias.defined() ? at::zeros({s.dim}, acc_options) : at::Tensor();
  at::Tensor pos_acc = grad_pos.defined() ? at::zeros({s.num_patches(), s.dim}, acc_options) : at::Tensor();
  acc_t* bias_p = bias_acc.defined() ? bias_acc.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* pos_p = pos_acc.defined() ? pos_acc.mutable_data_ptr<acc_t>() : nullptr;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const int64_t* ids = ids_keep.const_data_ptr<int64_t>();
  const int64_t rows = s.batch * s.kept, dim = s.dim, n_patches = s.num_patches();
  at::parallel_for(0, dim, std::max<int64_t>(16, 4096 / std::max<int64_t>(rows, 1)), [&](int64_t d0, int64_t d1) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = ids[r];
      FASTMIM_CHECK_INDEX_VALUE(ids_keep, n, n_patches);
      const scalar_t* row = g + r * dim;
      if (bias_p) {
        for (int64_t d = d0; d < d1; ++d) bias_p[d] += static_cast<acc_t>(row[d]);
      }
      if (pos_p) {
        acc_t* pos_row = pos_p + n * dim;
        for (int64_t d = d0; d < d1; ++d) pos_row[d] += static_cast<acc_t>(row[d]);
      }
    }
  });
  if (bias_p) grad_bias.copy_(bias_acc);
  if (pos_p) grad_pos.copy_(pos_acc);
}

void reduce_rows(const at::Tensor& grad, const at::Tensor& ids_keep, const PatchEmbedShape& s,
                 at::Tensor& grad_bias, at::Tensor& grad_pos) {
  FASTMIM_DISPATCH_CPU_FLOATS(grad.scalar_type(), "masked_patch_embed_reduce_rows", [&] {
    reduce_rows_typed<scalar_t>(grad, ids_keep, s, grad_bias, grad_pos);
  });
}

// One task per sample: a sample's kept patches (even repeated ones) are added by one thread in order.
template <typename scalar_t>
void scatter_typed(const at::Tensor& grad_patches, const at::Tensor& ids_keep, const PatchEmbedShape& s,
                   at::Tensor& grad_images) {
  using acc_t = at::opmath_type<scalar_t>;
  const PatchGeometry g = patch_geometry(grad_images, s);
  const scalar_t* src = grad_patches.const_data_ptr<scalar_t>();
  const int64_t* ids = ids_keep.const_data_ptr<int64_t>();
  scalar_t* dst = grad_images.mutable_data_ptr<scalar_t>();
  const int64_t numel = s.patch_numel(), n_patches = s.num_patches();
  const int64_t length = g.line_length(), lines = g.lines(), step = g.step();
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t k = 0; k < s.kept; ++k) {
        const int64_t r = b * s.kept + k, n = ids[r];
        FASTMIM_CHECK_INDEX_VALUE(ids_keep, n, n_patches);
        scalar_t* patch = dst + g.patch_origin(b, n);
        const scalar_t* row = src + r * numel;
        for (int64_t line = 0; line < lines; ++line) {
          scalar_t* pixels = patch + g.line_origin(line);
          const scalar_t* src_line = row + line * length;
          for (int64_t j = 0; j < length; ++j) {
            scalar_t& pixel = pixels[j * step];
            pixel = static_cast<scalar_t>(static_cast<acc_t>(pixel) + static_cast<acc_t>(src_line[j]));
          }
        }
      }
    }
  });
}

void scatter(const at::Tensor& grad_patches, const at::Tensor& ids_keep, const PatchEmbedShape& s,
             at::Tensor& grad_images) {
  FASTMIM_DISPATCH_CPU_FLOATS(grad_patches.scalar_type(), "masked_patch_embed_scatter", [&] {
    scatter_typed<scalar_t>(grad_patches, ids_keep, s, grad_images);
  });
}

constexpr PatchEmbedPrimitives kCpu{gather, reduce_rows, scatter};

at::Tensor forward_cpu(const at::Tensor& images, const at::Tensor& ids_keep, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_embed) {
  return masked_patch_embed_forward(kCpu, images, ids_keep, weight, bias, pos_embed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out,
                                                                        const at::Tensor& images,
                                                                        const at::Tensor& ids_keep,
                                                                        const at::Tensor& weight,
                                                                        std::array<bool, 4> output_mask) {
  return masked_patch_embed_backward(kCpu, grad_out, images, ids_keep, weight, output_mask);
}

}  // namespace
}  // namespace fastmim

TORCH_LIBRARY_IMPL(fastmim, CPU, m) {
  m.impl("masked_patch_embed", &fastmim::forward_cpu);
  m.impl("masked_patch_embed_backward", &fastmim::backward_cpu);
}
