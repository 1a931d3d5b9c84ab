// CPU kernel of deepalign::hard_permutation: the one-hot permutation maximising <scores, P>.
// Rounding log P of a Sinkhorn plan is the same problem on the raw scores (the potentials add a
// constant to every permutation, kernels.md §5c), so callers may pass either.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "checks.h"
#include "cpu/assignment_cpu.h"
#include "stable_ops.h"

namespace deepalign::cpu {

Tensor hard_permutation_cpu(const Tensor& scores) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  const Tensor cols = linear_assignment_cpu_named(scores, /*maximize=*/true, "scores");
  const int64_t batch = scores.size(0), n = scores.size(1);
  Tensor p = torch::stable::new_zeros(scores, {batch, n, n});
  dispatch_real(p.scalar_type(), "hard_permutation_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const int64_t* c = cols.const_data_ptr<int64_t>();
    scalar_t* out = p.mutable_data_ptr<scalar_t>();
    for (int64_t row = 0; row < batch * n; ++row) out[row * n + c[row]] = scalar_t(1);
  });
  return p;
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("hard_permutation", TORCH_BOX(&hard_permutation_cpu));
}

}  // namespace deepalign::cpu
