// CPU kernel of deepalign::_outer_sinkhorn_project_backward: the unrolled Sinkhorn backward on
// S = f0 @ f1^T, then d f0 = dS f1 and d f1 = dS^T f0.
#include <torch/library.h>

#include "checks.h"
#include "cpu/sinkhorn_cpu.h"

namespace deepalign::cpu {

std::tuple<at::Tensor, at::Tensor> outer_sinkhorn_project_backward_cpu(
    const at::Tensor& grad_p, const at::Tensor& f0, const at::Tensor& f1, const at::Tensor& row_pot,
    const at::Tensor& col_pot, int64_t n_iters, double tau) {
  check_outer_features(f0, f1);
  const at::Tensor scores = at::bmm(f0, f1.transpose(1, 2));
  const at::Tensor grad_s =
      sinkhorn_project_backward_cpu(grad_p, scores, row_pot, col_pot, n_iters, tau);
  return {at::bmm(grad_s, f1), at::bmm(grad_s.transpose(1, 2), f0)};
}

TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("_outer_sinkhorn_project_backward", &outer_sinkhorn_project_backward_cpu);
}

}  // namespace deepalign::cpu
