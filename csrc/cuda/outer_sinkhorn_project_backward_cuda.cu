// CUDA kernel of deepalign::_outer_sinkhorn_project_backward: the fused unrolled Sinkhorn
// backward on the in-tile f0 @ f1^T gives d scores; the chain rule through the product is
// d f0 = dS f1 and d f1 = dS^T f0 (cuBLAS, full precision).
#include <torch/csrc/stable/library.h>

#include "checks.h"
#include "cuda/sinkhorn_backward.cuh"

namespace deepalign::cuda {
namespace {

std::tuple<Tensor, Tensor> outer_sinkhorn_project_backward_cuda(
    const Tensor& grad_p, const Tensor& f0, const Tensor& f1,
    const Tensor& row_pot, const Tensor& col_pot, int64_t n_iters, double tau) {
  DA_CHECK_DIM(f0, 3, "f0", "(B, n, d)");
  DA_CHECK(same_shape(f0, f1), "f0 and f1 must have the same shape (B, n, d), got ",
           shape(f0), " and ", shape(f1));
  DA_CHECK_FLOAT(f0, "f0");
  DA_CHECK_SAME_DTYPE(f0, f1, "f0", "f1");
  DA_CHECK_SAME_DEVICE(f0, f1, "f0", "f1");
  DA_CHECK_SAME_DEVICE(grad_p, f0, "grad_p", "f0");
  DA_CHECK_SAME_DEVICE(row_pot, f0, "row_pot", "f0");
  DA_CHECK_SAME_DEVICE(col_pot, f0, "col_pot", "f0");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const DeviceGuard guard(f0.get_device_index());
  const Tensor ds =
      sinkhorn_backward_op(grad_p, Tensor(), f0, f1, row_pot, col_pot, n_iters, tau);
  namespace st = torch::stable;
  const Tensor a = st::to(f0, ds.scalar_type()), b = st::to(f1, ds.scalar_type());
  return {st::to(aten::bmm(ds, b), f0.scalar_type()),
          st::to(aten::bmm(st::transpose(ds, 1, 2), a), f1.scalar_type())};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("_outer_sinkhorn_project_backward", TORCH_BOX(&outer_sinkhorn_project_backward_cuda));
}

}  // namespace deepalign::cuda
