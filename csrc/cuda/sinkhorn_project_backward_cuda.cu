// CUDA kernel of deepalign::_sinkhorn_project_backward: the exact unrolled backward, fused
// (cuda/sinkhorn_backward.cuh), replaying the forward's potentials.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/sinkhorn_backward.cuh"

namespace deepalign::cuda {
namespace {

at::Tensor sinkhorn_project_backward_cuda(const at::Tensor& grad_p, const at::Tensor& scores,
                                          const at::Tensor& row_pot, const at::Tensor& col_pot,
                                          int64_t n_iters, double tau) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  DA_CHECK_FLOAT(scores, "scores");
  DA_CHECK_SAME_DEVICE(grad_p, scores, "grad_p", "scores");
  DA_CHECK_SAME_DEVICE(row_pot, scores, "row_pot", "scores");
  DA_CHECK_SAME_DEVICE(col_pot, scores, "col_pot", "scores");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const c10::cuda::CUDAGuard guard(scores.device());
  return sinkhorn_backward_op(grad_p, scores, at::Tensor(), at::Tensor(), row_pot, col_pot,
                              n_iters, tau)
      .to(scores.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("_sinkhorn_project_backward", &sinkhorn_project_backward_cuda);
}

}  // namespace deepalign::cuda
