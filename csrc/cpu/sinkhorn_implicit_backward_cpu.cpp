// CPU kernel of deepalign::_sinkhorn_implicit_backward: the implicit-function gradient of the
// Sinkhorn fixed point at a doubly-stochastic plan P (Eisenberger et al., CVPR 2022;
// kernels.md §3b, §5a.5). With H = P * G, r = H 1, c = H^T 1:
//   (I - P P^T + 1 1^T / n) a = r - P c,   b = c - P^T a,   d scores = P * (G - a 1^T - 1 b^T) / tau.
// The 1 1^T / n term removes the gauge null space (a + s, b - s). It is exact only at convergence
// (P 1 = P^T 1 = 1); as P approaches a permutation the system becomes singular in directions that
// P * (a 1^T + 1 b^T) does not see, which the tiny ridge keeps finite.
// Dense batched solve in float64 (n^3 per matrix, independent of n_iters).
// Written with tensor ops through the stable ABI (only the n x n shift is filled on the CPU), so
// the CUDA kernel runs this same function on CUDA tensors.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <vector>

#include "checks.h"
#include "stable_ops.h"

namespace deepalign::cpu {

namespace {
constexpr double kRidge = 1e-12;
}

Tensor sinkhorn_implicit_backward_cpu(const Tensor& grad_p, const Tensor& p, double tau) {
  DA_CHECK_DIM(p, 3, "p", "(B, n, n)");
  DA_CHECK_SQUARE(p, "p");
  DA_CHECK_REAL(p, "p");
  DA_CHECK_SAME_DTYPE(grad_p, p, "grad_p", "p");
  DA_CHECK(same_shape(grad_p, p), "grad_p must have the shape of p ", shape(p), ", got ",
           shape(grad_p));
  DA_CHECK_TAU(tau);
  namespace st = torch::stable;
  const int64_t n = p.size(1);
  if (p.numel() == 0) return st::new_zeros(p, p.sizes());
  const Tensor P = st::to(p, ScalarType::Double), G = st::to(grad_p, ScalarType::Double);
  const Tensor H = aten::mul(P, G);
  const std::vector<int64_t> last{-1}, second_last{-2};
  const Tensor r = st::sum(H, last, /*keepdim=*/true);          // (B, n, 1)
  const Tensor c = st::unsqueeze(st::sum(H, second_last), -1);  // (B, n, 1)
  // (1 + ridge) I + 1 1^T / n, made on the CPU and moved to P's device.
  Tensor shift = st::empty({n, n}, ScalarType::Double);
  double* sh = shift.mutable_data_ptr<double>();
  for (int64_t i = 0; i < n * n; ++i) sh[i] = 1.0 / n + (i % (n + 1) == 0 ? 1.0 + kRidge : 0.0);
  shift = st::to(shift, P.device());
  const Tensor Pt = st::transpose(P, 1, 2);
  const Tensor M = st::subtract(shift, aten::bmm(P, Pt));
  const Tensor a = aten::linalg_solve(M, st::subtract(r, aten::bmm(P, c)));
  const Tensor b = st::subtract(c, aten::bmm(Pt, a));
  const Tensor d = aten::mul(P, st::subtract(st::subtract(G, a), st::transpose(b, 1, 2)));
  const Tensor tau_t = st::full({}, tau, ScalarType::Double, std::nullopt, P.device());
  return st::to(aten::div(d, tau_t), p.scalar_type());
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("_sinkhorn_implicit_backward", TORCH_BOX(&sinkhorn_implicit_backward_cpu));
}

}  // namespace deepalign::cpu
