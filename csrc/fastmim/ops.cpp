// The `fastmim` operator library. The CPU kernels register in csrc/cpu/*.cpp, the CUDA kernels in
// csrc/cuda/*.cu; the fake (meta) kernels and autograd formulas are registered from Python
// (fastmim/ops/<op>.py), next to each op's reference.
#include "schemas.h"

TORCH_LIBRARY(fastmim, m) { fastmim::define_schemas(m); }
