// CUDA kernel of deepalign::_outer_sinkhorn_project_backward: the fused unrolled Sinkhorn
// backward on the in-tile f0 @ f1^T gives d scores; the chain rule through the product is
// d f0 = dS f1 and d f1 = dS^T f0 (cuBLAS, full precision).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/sinkhorn_backward.cuh"

namespace deepalign::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> outer_sinkhorn_project_backward_cuda(
    const at::Tensor& grad_p, const at::Tensor& f0, const at::Tensor& f1,
    const at::Tensor& row_pot, const at::Tensor& col_pot, int64_t n_iters, double tau) {
  DA_CHECK_DIM(f0, 3, "f0", "(B, n, d)");
  TORCH_CHECK(f0.sizes() == f1.sizes(), "f0 and f1 must have the same shape (B, n, d), got ",
              f0.sizes(), " and ", f1.sizes());
  DA_CHECK_FLOAT(f0, "f0");
  DA_CHECK_SAME_DTYPE(f0, f1, "f0", "f1");
  DA_CHECK_SAME_DEVICE(f0, f1, "f0", "f1");
  DA_CHECK_SAME_DEVICE(grad_p, f0, "grad_p", "f0");
  DA_CHECK_SAME_DEVICE(row_pot, f0, "row_pot", "f0");
  DA_CHECK_SAME_DEVICE(col_pot, f0, "col_pot", "f0");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const c10::cuda::CUDAGuard guard(f0.device());
  const at::Tensor ds =
      sinkhorn_backward_op(grad_p, at::Tensor(), f0, f1, row_pot, col_pot, n_iters, tau);
  const at::Tensor a = f0.to(ds.scalar_type()), b = f1.to(ds.scalar_type());
  return {at::bmm(ds, b).to(f0.scalar_type()), at::bmm(ds.transpose(1, 2), a).to(f1.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("_outer_sinkhorn_project_backward", &outer_sinkhorn_project_backward_cuda);
}

}  // namespace deepalign::cuda
