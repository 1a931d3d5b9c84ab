// CUDA kernel of deepalign::sinkhorn_project: the fused resident-tile Sinkhorn forward
// (cuda/sinkhorn_forward.cuh), or the global-memory path for matrices too large for the chip.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/sinkhorn_forward.cuh"

namespace deepalign::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_project_cuda(const at::Tensor& scores,
                                                                     int64_t n_iters, double tau) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  DA_CHECK_FLOAT(scores, "scores");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const c10::cuda::CUDAGuard guard(scores.device());
  return sinkhorn_forward_op(scores, at::Tensor(), at::Tensor(), n_iters, tau, "scores");
}

}  // namespace

TORCH_LIBRARY_IMPL(deepalign, CUDA, m) { m.impl("sinkhorn_project", &sinkhorn_project_cuda); }

}  // namespace deepalign::cuda
