// CPU kernel of deepalign::outer_sinkhorn_project: Sinkhorn projection of f0 @ f1^T.
// The scores come from one batched GEMM into the buffer the Sinkhorn kernel then reads; on CPU
// that buffer is L2-resident per matrix, so this is the fusion that matters (kernels.md §5a.6).
#include <torch/library.h>

#include "checks.h"
#include "cpu/sinkhorn_cpu.h"

namespace deepalign::cpu {

// Shared with the backward: f0 and f1 as (B, n, d) features of the same shape and dtype.
void check_outer_features(const at::Tensor& f0, const at::Tensor& f1) {
  DA_CHECK_DIM(f0, 3, "f0", "(B, n, d)");
  DA_CHECK_DIM(f1, 3, "f1", "(B, n, d)");
  DA_CHECK_REAL(f0, "f0");
  DA_CHECK_SAME_DTYPE(f0, f1, "f0", "f1");
  TORCH_CHECK(f0.sizes() == f1.sizes(), "f0 and f1 must have the same shape (B, n, d), got ",
              f0.sizes(), " and ", f1.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> outer_sinkhorn_project_cpu(const at::Tensor& f0,
                                                                          const at::Tensor& f1,
                                                                          int64_t n_iters,
                                                                          double tau) {
  check_outer_features(f0, f1);
  // NaN or inf in f0 or f1 reaches the scores, which the kernel scans anyway.
  return sinkhorn_project_cpu_checked(
      at::bmm(f0, f1.transpose(1, 2)), n_iters, tau,
      "f0 and f1 must be finite (no NaN or inf) and f0 @ f1^T / tau must not overflow");
}

TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("outer_sinkhorn_project", &outer_sinkhorn_project_cpu);
}

}  // namespace deepalign::cpu
