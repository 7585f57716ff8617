// The `fastmim_emulated` operator library (test-only, tests/emulation/build.py): the schemas of `fastmim`,
// served on CPU tensors by the CUDA kernel bodies of csrc/cuda/*.cu compiled against the SIMT emulation, and
// the emulation's own settings.
#include <torch/library.h>

#include "../fastmim/schemas.h"
#include "simt.h"

namespace {

// gridDim.y/z limit (65535 on every GPU; tests lower it to reach the kernels' grid loops on small inputs) and
// the seed of the order the blocks run in.
void configure(int64_t max_grid_y, int64_t block_order_seed) {
  TORCH_CHECK_VALUE(max_grid_y >= 1 && max_grid_y <= 65535, "max_grid_y must be in [1, 65535], got ", max_grid_y);
  fastmim::simt::limits().max_grid_y = static_cast<unsigned>(max_grid_y);
  fastmim::simt::limits().max_grid_z = static_cast<unsigned>(max_grid_y);
  fastmim::simt::limits().block_order_seed = static_cast<uint64_t>(block_order_seed);
}

}  // namespace

TORCH_LIBRARY(fastmim_emulated, m) {
  fastmim::define_schemas(m);
  m.def("configure(int max_grid_y=65535, int block_order_seed=0) -> ()", &configure);
}
