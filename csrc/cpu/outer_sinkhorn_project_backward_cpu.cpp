// CPU kernel of deepalign::_outer_sinkhorn_project_backward: the unrolled Sinkhorn backward on
// S = f0 @ f1^T, then d f0 = dS f1 and d f1 = dS^T f0.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/sinkhorn_cpu.h"

namespace deepalign::cpu {

std::tuple<Tensor, Tensor> outer_sinkhorn_project_backward_cpu(
    const Tensor& grad_p, const Tensor& f0, const Tensor& f1, const Tensor& row_pot,
    const Tensor& col_pot, int64_t n_iters, double tau) {
  check_outer_features(f0, f1);
  const Tensor scores = aten::bmm(f0, torch::stable::transpose(f1, 1, 2));
  const Tensor grad_s =
      sinkhorn_project_backward_cpu(grad_p, scores, row_pot, col_pot, n_iters, tau);
  return {aten::bmm(grad_s, f1), aten::bmm(torch::stable::transpose(grad_s, 1, 2), f0)};
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("_outer_sinkhorn_project_backward", TORCH_BOX(&outer_sinkhorn_project_backward_cpu));
}

}  // namespace deepalign::cpu
