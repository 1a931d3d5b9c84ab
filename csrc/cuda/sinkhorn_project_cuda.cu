// CUDA kernel of deepalign::sinkhorn_project: the fused resident-tile Sinkhorn forward
// (cuda/sinkhorn_forward.cuh), or the global-memory path for matrices too large for the chip.
#include <torch/csrc/stable/library.h>

#include "checks.h"
#include "cuda/sinkhorn_forward.cuh"

namespace deepalign::cuda {
namespace {

std::tuple<Tensor, Tensor, Tensor> sinkhorn_project_cuda(const Tensor& scores,
                                                                     int64_t n_iters, double tau) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  DA_CHECK_FLOAT(scores, "scores");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const DeviceGuard guard(scores.get_device_index());
  return sinkhorn_forward_op(scores, Tensor(), Tensor(), n_iters, tau, "scores");
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("sinkhorn_project", TORCH_BOX(&sinkhorn_project_cuda));
}

}  // namespace deepalign::cuda
