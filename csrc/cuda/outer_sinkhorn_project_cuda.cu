// CUDA kernel of deepalign::outer_sinkhorn_project: scores = f0 @ f1^T are computed in full
// precision straight into the on-chip tile (never written to global memory), then projected by
// the same fused Sinkhorn as sinkhorn_project. Beyond the on-chip size the product is formed
// with cuBLAS and the global-memory path runs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/sinkhorn_forward.cuh"

namespace deepalign::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> outer_sinkhorn_project_cuda(const at::Tensor& f0,
                                                                           const at::Tensor& f1,
                                                                           int64_t n_iters,
                                                                           double tau) {
  DA_CHECK_DIM(f0, 3, "f0", "(B, n, d)");
  DA_CHECK_DIM(f1, 3, "f1", "(B, n, d)");
  TORCH_CHECK(f0.sizes() == f1.sizes(), "f0 and f1 must have the same shape (B, n, d), got ",
              f0.sizes(), " and ", f1.sizes());
  DA_CHECK_FLOAT(f0, "f0");
  DA_CHECK_SAME_DTYPE(f0, f1, "f0", "f1");
  DA_CHECK_SAME_DEVICE(f0, f1, "f0", "f1");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const c10::cuda::CUDAGuard guard(f0.device());
  return sinkhorn_forward_op(at::Tensor(), f0, f1, n_iters, tau, "f0 @ f1^T");
}

}  // namespace

TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("outer_sinkhorn_project", &outer_sinkhorn_project_cuda);
}

}  // namespace deepalign::cuda
