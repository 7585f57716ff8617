// Host-side parsing of the string options of align_loss, with errors naming the argument.
#pragma once

#include <c10/util/Exception.h>

#include <string_view>

#include "index_math.h"

namespace fastmim {

inline LossKind parse_loss(std::string_view name) {
  if (name == "smooth_l1") return LossKind::SmoothL1;
  if (name == "l2") return LossKind::L2;
  if (name == "l1") return LossKind::L1;
  if (name == "cosine") return LossKind::Cosine;
  TORCH_CHECK_VALUE(false, "loss must be one of ['smooth_l1', 'l2', 'l1', 'cosine'], got '", name, "'");
}

inline RowNorm parse_row_norm(std::string_view name, const char* argument) {
  if (name == "layernorm") return RowNorm::LayerNorm;
  if (name == "l2") return RowNorm::L2;
  if (name == "none") return RowNorm::None;
  TORCH_CHECK_VALUE(false, argument, " must be one of ['layernorm', 'l2', 'none'], got '", name, "'");
}

}  // namespace fastmim
