// CUDA kernel of deepalign::_sinkhorn_project_backward: the exact unrolled backward, fused
// (cuda/sinkhorn_backward.cuh), replaying the forward's potentials.
#include <torch/csrc/stable/library.h>

#include "checks.h"
#include "cuda/sinkhorn_backward.cuh"

namespace deepalign::cuda {
namespace {

Tensor sinkhorn_project_backward_cuda(const Tensor& grad_p, const Tensor& scores,
                                          const Tensor& row_pot, const Tensor& col_pot,
                                          int64_t n_iters, double tau) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  DA_CHECK_FLOAT(scores, "scores");
  DA_CHECK_SAME_DEVICE(grad_p, scores, "grad_p", "scores");
  DA_CHECK_SAME_DEVICE(row_pot, scores, "row_pot", "scores");
  DA_CHECK_SAME_DEVICE(col_pot, scores, "col_pot", "scores");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const DeviceGuard guard(scores.get_device_index());
  return torch::stable::to(
      sinkhorn_backward_op(grad_p, scores, Tensor(), Tensor(), row_pot, col_pot, n_iters, tau),
      scores.scalar_type());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("_sinkhorn_project_backward", TORCH_BOX(&sinkhorn_project_backward_cuda));
}

}  // namespace deepalign::cuda
