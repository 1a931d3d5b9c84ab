// CPU kernel of deepalign::_sinkhorn_implicit_backward: the implicit-function gradient of the
// Sinkhorn fixed point at a doubly-stochastic plan P (Eisenberger et al., CVPR 2022;
// kernels.md §3b, §5a.5). With H = P * G, r = H 1, c = H^T 1:
//   (I - P P^T + 1 1^T / n) a = r - P c,   b = c - P^T a,   d scores = P * (G - a 1^T - 1 b^T) / tau.
// The 1 1^T / n term removes the gauge null space (a + s, b - s). It is exact only at convergence
// (P 1 = P^T 1 = 1); as P approaches a permutation the system becomes singular in directions that
// P * (a 1^T + 1 b^T) does not see, which the tiny ridge keeps finite.
// Dense batched solve in float64 (n^3 per matrix, independent of n_iters).
#include <torch/library.h>

#include "checks.h"

namespace deepalign::cpu {

namespace {
constexpr double kRidge = 1e-12;
}

at::Tensor sinkhorn_implicit_backward_cpu(const at::Tensor& grad_p, const at::Tensor& p,
                                          double tau) {
  DA_CHECK_DIM(p, 3, "p", "(B, n, n)");
  DA_CHECK_SQUARE(p, "p");
  DA_CHECK_REAL(p, "p");
  DA_CHECK_SAME_DTYPE(grad_p, p, "grad_p", "p");
  TORCH_CHECK(grad_p.sizes() == p.sizes(), "grad_p must have the shape of p ", p.sizes(),
              ", got ", grad_p.sizes());
  DA_CHECK_TAU(tau);
  const int64_t n = p.size(1);
  if (p.numel() == 0) return at::zeros_like(p);
  const at::Tensor P = p.to(at::kDouble), G = grad_p.to(at::kDouble);
  const at::Tensor H = P * G;
  const at::Tensor r = H.sum(-1, true), c = H.sum(-2).unsqueeze(-1);  // (B, n, 1)
  const at::Tensor shift = at::eye(n, P.options()).mul_(1.0 + kRidge).add_(1.0 / n);
  const at::Tensor M = at::baddbmm(shift, P, P.transpose(1, 2), 1.0, -1.0);
  const at::Tensor a = at::linalg_solve(M, r - at::bmm(P, c));
  const at::Tensor b = c - at::bmm(P.transpose(1, 2), a);
  return (P * (G - a - b.transpose(1, 2))).div_(tau).to(p.scalar_type());
}

TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("_sinkhorn_implicit_backward", &sinkhorn_implicit_backward_cpu);
}

}  // namespace deepalign::cpu
