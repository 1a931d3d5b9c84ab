// CPU kernel of deepalign::outer_sinkhorn_project: Sinkhorn projection of f0 @ f1^T.
// A matrix the scaling domain takes (cpu/sinkhorn_scaling.h) gets its scores from a small GEMM
// into a per-thread buffer that stays in L2 while the projection reads it: the batch of scores
// never goes through memory. Otherwise the scores come from one batched GEMM into the buffer the
// log-domain kernel then reads (per matrix L2-resident too, kernels.md §5a.6).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/sinkhorn_cpu.h"
#include "cpu/sinkhorn_scaling.h"

namespace deepalign::cpu {

// Shared with the backward: f0 and f1 as (B, n, d) features of the same shape and dtype.
void check_outer_features(const Tensor& f0, const Tensor& f1) {
  DA_CHECK_DIM(f0, 3, "f0", "(B, n, d)");
  DA_CHECK_DIM(f1, 3, "f1", "(B, n, d)");
  DA_CHECK_REAL(f0, "f0");
  DA_CHECK_SAME_DTYPE(f0, f1, "f0", "f1");
  DA_CHECK(same_shape(f0, f1), "f0 and f1 must have the same shape (B, n, d), got ",
           shape(f0), " and ", shape(f1));
}

namespace {

// out = a b^T for one matrix, a and b (n, d): bt = b^T (rows zero-padded to `pad`, a multiple
// of 4 vectors) first, so that a block of a row of out is d vectorised updates of four
// accumulators, with bt's rows read from L1.
template <typename T>
DA_SIMD_CLONES void outer_scores(const T* a, const T* b, T* bt, T* out, int64_t n, int64_t d,
                                 int64_t pad) {
  constexpr int64_t W = Simd<T>::kLanes;
  std::fill(bt, bt + d * pad, T(0));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < d; ++c) bt[c * pad + j] = b[j * d + c];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; j += 4 * W) {
      Vec<T> acc[4]{};
      for (int64_t c = 0; c < d; ++c) {
        const T aic = a[i * d + c];
        for (int q = 0; q < 4; ++q) acc[q] += load(bt + c * pad + j + q * W) * aic;
      }
      for (int q = 0; q < 4; ++q)
        if (j + q * W < n)
          store_partial(out + i * n + j + q * W, acc[q], std::min<int64_t>(W, n - j - q * W));
    }
  }
}

// Whether every matrix ran in the scaling domain, from scores made per thread.
template <typename T>
bool project_in_scaling_domain(const Tensor& f0, const Tensor& f1, Tensor& p, Tensor& row_pot,
                               Tensor& col_pot, int64_t n_iters,
                               double tau) {
  const int64_t batch = f0.size(0), n = f0.size(1), d = f0.size(2);
  constexpr int64_t kBlock = 4 * Simd<T>::kLanes;
  const int64_t pad = (n + kBlock - 1) / kBlock * kBlock;
  const T *a = f0.const_data_ptr<T>(), *b = f1.const_data_ptr<T>();
  T* pp = p.mutable_data_ptr<T>();
  T *rp = row_pot.mutable_data_ptr<T>(), *cp = col_pot.mutable_data_ptr<T>();
  struct Scratch {
    ScalingScratch scaling;
    std::vector<T> scores, bt;
  };
  std::atomic<bool> all{true};
  parallel_dynamic(
      batch, [] { return Scratch{}; },
      [&](Scratch& sc, int64_t m) {
        if (!all.load(std::memory_order_relaxed)) return;
        sc.scores.resize(n * n);
        sc.bt.resize(d * pad);
        outer_scores(a + m * n * d, b + m * n * d, sc.bt.data(), sc.scores.data(), n, d, pad);
        if (!scaling_forward(sc.scores.data(), pp + m * n * n, rp + m * n_iters * n,
                             cp + m * n_iters * n, n, n_iters, 1.0 / tau, sc.scaling))
          all = false;
      });
  return all;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> outer_sinkhorn_project_cpu(const Tensor& f0, const Tensor& f1,
                                                              int64_t n_iters, double tau) {
  check_outer_features(f0, f1);
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const int64_t batch = f0.size(0), n = f0.size(1);
  if (batch > 0 && n > 0 && n_iters > 0 && n <= kScalingMaxN) {
    Tensor p = torch::stable::new_empty(f0, {batch, n, n});
    Tensor row_pot = torch::stable::new_empty(f0, {batch, n_iters, n});
    Tensor col_pot = torch::stable::new_empty(f0, {batch, n_iters, n});
    bool done = false;
    dispatch_real(f0.scalar_type(), "outer_sinkhorn_project_cpu", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      done = project_in_scaling_domain<scalar_t>(torch::stable::contiguous(f0),
                                                 torch::stable::contiguous(f1), p, row_pot,
                                                 col_pot, n_iters, tau);
    });
    if (done) return {p, row_pot, col_pot};
  }
  // Some matrix outside the scaling range (or NaN or inf in f0 or f1, which the log-domain
  // kernel reports): the whole batch through it.
  return sinkhorn_project_cpu_checked(
      aten::bmm(f0, torch::stable::transpose(f1, 1, 2)), n_iters, tau,
      "f0 and f1 must be finite (no NaN or inf) and f0 @ f1^T / tau must not overflow");
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("outer_sinkhorn_project", TORCH_BOX(&outer_sinkhorn_project_cpu));
}

}  // namespace deepalign::cpu
