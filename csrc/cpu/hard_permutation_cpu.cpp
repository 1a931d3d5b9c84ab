// CPU kernel of deepalign::hard_permutation: the one-hot permutation maximising <scores, P>.
// Rounding log P of a Sinkhorn plan is the same problem on the raw scores (the potentials add a
// constant to every permutation, kernels.md §5c), so callers may pass either.
#include <torch/library.h>

#include "checks.h"
#include "cpu/assignment_cpu.h"

namespace deepalign::cpu {

at::Tensor hard_permutation_cpu(const at::Tensor& scores) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  const at::Tensor cols = linear_assignment_cpu_named(scores, /*maximize=*/true, "scores");
  return at::zeros_like(scores, at::MemoryFormat::Contiguous).scatter_(2, cols.unsqueeze(-1), 1);
}

TORCH_LIBRARY_IMPL(deepalign, CPU, m) { m.impl("hard_permutation", &hard_permutation_cpu); }

}  // namespace deepalign::cpu
