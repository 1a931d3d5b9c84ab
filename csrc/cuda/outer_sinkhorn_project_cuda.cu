// CUDA kernel of deepalign::outer_sinkhorn_project: scores = f0 @ f1^T are computed in full
// precision straight into the on-chip tile (never written to global memory), then projected by
// the same fused Sinkhorn as sinkhorn_project. Beyond the on-chip size the product is formed
// with cuBLAS and the global-memory path runs.
#include <torch/csrc/stable/library.h>

#include "checks.h"
#include "cuda/sinkhorn_forward.cuh"

namespace deepalign::cuda {
namespace {

std::tuple<Tensor, Tensor, Tensor> outer_sinkhorn_project_cuda(const Tensor& f0,
                                                                           const Tensor& f1,
                                                                           int64_t n_iters,
                                                                           double tau) {
  DA_CHECK_DIM(f0, 3, "f0", "(B, n, d)");
  DA_CHECK_DIM(f1, 3, "f1", "(B, n, d)");
  DA_CHECK(same_shape(f0, f1), "f0 and f1 must have the same shape (B, n, d), got ",
           shape(f0), " and ", shape(f1));
  DA_CHECK_FLOAT(f0, "f0");
  DA_CHECK_SAME_DTYPE(f0, f1, "f0", "f1");
  DA_CHECK_SAME_DEVICE(f0, f1, "f0", "f1");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const DeviceGuard guard(f0.get_device_index());
  return sinkhorn_forward_op(Tensor(), f0, f1, n_iters, tau, "f0 @ f1^T");
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("outer_sinkhorn_project", TORCH_BOX(&outer_sinkhorn_project_cuda));
}

}  // namespace deepalign::cuda
