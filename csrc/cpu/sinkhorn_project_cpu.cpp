// CPU forward of deepalign::sinkhorn_project: fused log-domain Sinkhorn in potentials form.
// Semantics and the meaning of the returned potentials: cpu/sinkhorn_cpu.h.
//
// Each half-step is one pass over the read-only scores: the sum of exp(L + f + g) is taken
// shifted by the previous potential (after a row step every entry is <= 1, so a column sum is
// in [0, n] and cannot overflow; likewise for rows), so no max pass is needed. A sum that
// underflows (extreme scores / tau) is recomputed exactly with a max shift.
// The kernel works in base 2: with k = log2(e) / tau, k s_ij is L_ij log2(e), the potentials are
// kept times log2(e) (converted back when saved), and every exp is an exp2, which needs no range
// reduction by ln 2. The logs of a half-step are taken together, vectorised.
//
// That is the general kernel: a matrix of side <= kScalingMaxN with scores in range runs in the
// scaling domain instead (cpu/sinkhorn_scaling.cpp), one exp per element in all and one
// matrix-vector product per half-step.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/sinkhorn_cpu.h"
#include "cpu/sinkhorn_scaling.h"

namespace deepalign::cpu {
namespace {

// Below this a shifted sum has lost too many low-order terms to be trusted: recompute exactly.
template <typename T>
constexpr T kTinySum = sizeof(T) == 4 ? T(1e-25) : T(1e-250);

constexpr auto kNegInf = -std::numeric_limits<double>::infinity();

// g[j] = max(g[j], k * s_ij) over rows [r0, r1); returns false if some k * s_ij is not finite.
template <typename T>
DA_SIMD_CLONES bool col_max(const T* s, T* g, int64_t n, T k, int64_t r0, int64_t r1) {
  const T big = std::numeric_limits<T>::max();
  typename Simd<T>::I bad{};
  for (int64_t i = r0; i < r1; ++i) {
    for_chunks<T>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const Vec<T> x = load_partial(s + i * n + j, c, T(0)) * k;
      const Vec<T> m = load_partial(g + j, c, T(0));
      bad |= ((x < 0 ? -x : x) <= big) == 0;  // NaN compares false
      store_partial(g + j, m > x ? m : x, c);
    });
  }
  for (int l = 0; l < Simd<T>::kLanes; ++l)
    if (bad[l]) return false;
  return true;
}

// acc[j] += sum_{i in [r0, r1)} 2^(k s_ij + f_i + g_j)
template <typename T>
DA_SIMD_CLONES void col_sums(const T* s, const T* f, const T* g, T* acc, int64_t n, T k,
                             int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    const T* row = s + i * n;
    const T fi = f[i];
    for_chunks<T>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const Vec<T> x = load_partial(row + j, c, T(0)) * k + (load_partial(g + j, c, T(0)) + fi);
      store_partial(acc + j, load_partial(acc + j, c, T(0)) + vexp2_bounded<T>(x), c);
    });
  }
}

// sum_j 2^(k s_ij + g_j + shift) for one row.
template <typename T>
DA_INLINE T row_sum(const T* row, const T* g, int64_t n, T k, T shift) {
  constexpr int W = Simd<T>::kLanes;
  Vec<T> a0{}, a1{};
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {  // two accumulators hide the add latency
    a0 += vexp2_bounded<T>(load(row + j) * k + (load(g + j) + shift));
    a1 += vexp2_bounded<T>(load(row + j + W) * k + (load(g + j + W) + shift));
  }
  for_chunks<T>(n - j, [&](int64_t jj, auto c) DA_LAMBDA_INLINE {
    // Padding lanes get g = -inf, so they add 2^-inf = 0.
    a0 += vexp2_bounded<T>(load_partial(row + j + jj, c, T(0)) * k +
                           (load_partial(g + j + jj, c, T(kNegInf)) + shift));
  });
  return hsum<T>(a0 + a1);
}

// Exact -log2(sum_i 2^(k s[i * stride] + h[i])), i < n (the underflow fallback).
template <typename T>
T neg_lse2(const T* s, int64_t stride, const T* h, int64_t n, T k) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, s[i * stride] * k + h[i]);
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp2(s[i * stride] * k + h[i] - m);
  return -(m + std::log2(sum));
}

// pot[i] -= log2(sum[i]) for i < n: vectorised for float, scalar for double (which has no vlog2).
// A sum that is not a normal float gives garbage here; the caller recomputes those.
template <typename T>
DA_INLINE void subtract_log2(T* pot, const T* sum, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    for_chunks<float>(n, [&](int64_t i, auto c) DA_LAMBDA_INLINE {
      const Vec<float> x = load_partial(sum + i, c, 1.0f);
      store_partial(pot + i, load_partial(pot + i, c, 0.0f) - vlog2(x), c);
    });
  } else {
    for (int64_t i = 0; i < n; ++i) pot[i] -= std::log2(sum[i]);
  }
}

// Row step on rows [r0, r1): f_i <- -log2sumexp2_j(k s_ij + g_j), using sums[r0, r1) as scratch.
template <typename T>
DA_SIMD_CLONES void row_step(const T* s, T* f, const T* g, T* sums, int64_t n, T k, int64_t r0,
                             int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) sums[i] = row_sum(s + i * n, g, n, k, f[i]);
  subtract_log2(f + r0, sums + r0, r1 - r0);
  for (int64_t i = r0; i < r1; ++i)
    if (!(sums[i] > kTinySum<T>)) f[i] = neg_lse2(s + i * n, 1, g, n, k);
}

// Column step, given acc[j] = sum_i 2^(k s_ij + f_i + g_j): g_j <- -log2sumexp2_i(k s_ij + f_i).
template <typename T>
DA_SIMD_CLONES void col_finish(const T* s, const T* f, T* g, const T* acc, int64_t n, T k) {
  subtract_log2(g, acc, n);
  for (int64_t j = 0; j < n; ++j)
    if (!(acc[j] > kTinySum<T>)) g[j] = neg_lse2(s + j, n, f, n, k);
}

// p_ij = 2^(k s_ij + f_i + g_j) on rows [r0, r1).
template <typename T>
DA_SIMD_CLONES void write_plan(const T* s, const T* f, const T* g, T* p, int64_t n, T k,
                               int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    const T fi = f[i];
    for_chunks<T>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const Vec<T> x = load_partial(s + i * n + j, c, T(0)) * k + (load_partial(g + j, c, T(0)) + fi);
      store_partial(p + i * n + j, vexp2<T>(x), c);
    });
  }
}

template <typename T>
struct Problem {
  const T* s;      // (B, n, n) scores
  T* p;            // (B, n, n) plan
  T* row_pot;      // (B, n_iters, n)
  T* col_pot;      // (B, n_iters, n)
  T* f;            // (B, n) current row potential, times log2(e)
  T* g;            // (B, n) current column potential, times log2(e)
  T* acc;          // (B, blocks, n) partial column sums
  char* bad;       // (B,) non-finite input flags
  int64_t n, n_iters, blocks;
  T k;            // log2(e) / tau
  double inv_tau;

  const T* mat(int64_t b) const { return s + b * n * n; }
  std::pair<int64_t, int64_t> rows(int64_t blk) const { return block_rows(n, blocks, blk); }
  T* part(int64_t b, int64_t blk) const { return acc + (b * blocks + blk) * n; }

  // Sum the block partials into block 0 and finish the column step of matrix b.
  void finish_columns(int64_t b) const {
    T* a = part(b, 0);
    for (int64_t blk = 1; blk < blocks; ++blk)
      for (int64_t j = 0; j < n; ++j) a[j] += part(b, blk)[j];
    col_finish(mat(b), f + b * n, g + b * n, a, n, k);
  }
  void save(int64_t b, int64_t t) const {  // in natural units, as the backward reads them
    const T ln2 = T(0.6931471805599453);
    std::transform(f + b * n, f + (b + 1) * n, row_pot + (b * n_iters + t) * n,
                   [&](T x) { return x * ln2; });
    std::transform(g + b * n, g + (b + 1) * n, col_pot + (b * n_iters + t) * n,
                   [&](T x) { return x * ln2; });
  }

  // The forward of matrix b in the scaling domain, if it is in range.
  bool run_scaled(int64_t b, ScalingScratch& scratch) const {
    return scaling_forward(mat(b), p + b * n * n, row_pot + b * n_iters * n,
                           col_pot + b * n_iters * n, n, n_iters, inv_tau, scratch);
  }

  // The whole forward of matrix b in one task (blocks == 1).
  void run_matrix(int64_t b) const {
    T* gb = g + b * n;
    T* fb = f + b * n;
    std::fill(gb, gb + n, -std::numeric_limits<T>::infinity());
    bad[b] = !col_max(mat(b), gb, n, k, 0, n);
    if (bad[b]) return;
    for (int64_t j = 0; j < n; ++j) gb[j] = -gb[j];  // first column sums shifted by the max
    for (int64_t t = 0; t < n_iters; ++t) {
      std::fill(acc + b * n, acc + (b + 1) * n, T(0));
      col_sums(mat(b), fb, gb, acc + b * n, n, k, 0, n);
      col_finish(mat(b), fb, gb, acc + b * n, n, k);
      row_step(mat(b), fb, gb, acc + b * n, n, k, 0, n);
      save(b, t);
    }
    if (n_iters == 0) std::fill(gb, gb + n, T(0));
    write_plan(mat(b), fb, gb, p + b * n * n, n, k, 0, n);
  }
};

template <typename T>
void forward(const Problem<T>& pr, int64_t batch) {
  std::vector<char> done(batch, 0);
  parallel_dynamic(
      batch, [] { return ScalingScratch{}; },
      [&](ScalingScratch& scratch, int64_t b) {
        done[b] = pr.run_scaled(b, scratch);
        if (!done[b] && pr.blocks == 1) {
          pr.run_matrix(b);
          done[b] = 1;
        }
      });
  if (std::all_of(done.begin(), done.end(), [](char d) { return d; })) return;
  // A small batch outside the scaling range: every half-step is split by rows over the threads.
  const int64_t n = pr.n;
  std::fill(pr.acc, pr.acc + batch * pr.blocks * n, -std::numeric_limits<T>::infinity());
  for_blocks(batch, pr.blocks, [&](int64_t b, int64_t blk) {
    auto [r0, r1] = pr.rows(blk);
    if (!col_max(pr.mat(b), pr.part(b, blk), n, pr.k, r0, r1)) pr.bad[b] = 1;
  });
  for (int64_t b = 0; b < batch; ++b) {
    if (pr.bad[b]) return;
    for (int64_t j = 0; j < n; ++j) {
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t blk = 0; blk < pr.blocks; ++blk) m = std::max(m, pr.part(b, blk)[j]);
      pr.g[b * n + j] = pr.n_iters ? -m : T(0);
    }
  }
  for (int64_t t = 0; t < pr.n_iters; ++t) {
    std::fill(pr.acc, pr.acc + batch * pr.blocks * n, T(0));
    for_blocks(batch, pr.blocks, [&](int64_t b, int64_t blk) {
      auto [r0, r1] = pr.rows(blk);
      col_sums(pr.mat(b), pr.f + b * n, pr.g + b * n, pr.part(b, blk), n, pr.k, r0, r1);
    });
    for (int64_t b = 0; b < batch; ++b) pr.finish_columns(b);
    for_blocks(batch, pr.blocks, [&](int64_t b, int64_t blk) {
      auto [r0, r1] = pr.rows(blk);
      row_step(pr.mat(b), pr.f + b * n, pr.g + b * n, pr.part(b, 0), n, pr.k, r0, r1);
    });
    for (int64_t b = 0; b < batch; ++b) pr.save(b, t);
  }
  for_blocks(batch, pr.blocks, [&](int64_t b, int64_t blk) {
    auto [r0, r1] = pr.rows(blk);
    write_plan(pr.mat(b), pr.f + b * n, pr.g + b * n, pr.p + b * n * n, n, pr.k, r0, r1);
  });
}

}  // namespace

int64_t sinkhorn_row_blocks(int64_t batch, int64_t n) {
  const int64_t threads = torch::stable::get_num_threads();
  if (batch >= threads || n < 128) return 1;
  return std::min((threads + batch - 1) / batch, n / 64);
}

std::tuple<Tensor, Tensor, Tensor> sinkhorn_project_cpu_checked(
    const Tensor& scores, int64_t n_iters, double tau, const char* requirement) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  DA_CHECK_REAL(scores, "scores");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const Tensor s = torch::stable::contiguous(scores);
  const int64_t batch = s.size(0), n = s.size(1);
  Tensor p = torch::stable::empty_like(s);
  Tensor row_pot = torch::stable::new_empty(s, {batch, n_iters, n});
  Tensor col_pot = torch::stable::new_empty(s, {batch, n_iters, n});
  if (batch == 0 || n == 0) return {p, row_pot, col_pot};
  const int64_t blocks = sinkhorn_row_blocks(batch, n);
  Tensor f = torch::stable::new_zeros(s, {batch, n});
  Tensor g = torch::stable::new_empty(s, {batch, n});
  Tensor acc = torch::stable::new_empty(s, {batch, blocks, n});
  std::vector<char> bad(batch, 0);
  dispatch_real(s.scalar_type(), "sinkhorn_project_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    Problem<scalar_t> pr{s.const_data_ptr<scalar_t>(),
                         p.mutable_data_ptr<scalar_t>(),
                         row_pot.mutable_data_ptr<scalar_t>(),
                         col_pot.mutable_data_ptr<scalar_t>(),
                         f.mutable_data_ptr<scalar_t>(),
                         g.mutable_data_ptr<scalar_t>(),
                         acc.mutable_data_ptr<scalar_t>(),
                         bad.data(), n, n_iters, blocks, scalar_t(1.4426950408889634 / tau),
                         1.0 / tau};
    forward(pr, batch);
  });
  for (int64_t b = 0; b < batch; ++b)
    DA_CHECK(!bad[b], requirement, " (tau = ", tau, "); matrix ", b, " of the batch is not");
  return {p, row_pot, col_pot};
}

std::tuple<Tensor, Tensor, Tensor> sinkhorn_project_cpu(const Tensor& scores, int64_t n_iters,
                                                        double tau) {
  return sinkhorn_project_cpu_checked(
      scores, n_iters, tau, "scores must be finite (no NaN or inf, also after dividing by tau)");
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("sinkhorn_project", TORCH_BOX(&sinkhorn_project_cpu));
}

}  // namespace deepalign::cpu
