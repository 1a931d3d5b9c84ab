// CPU kernel of deepalign::_sinkhorn_project_backward: the exact gradient of the unrolled
// iterations, replaying the saved potentials (cpu/sinkhorn_cpu.h) instead of storing matrices.
//
// With x = L + f 1^T + 1 g^T the final log-plan and dx = G * P, the reverse sweep is
//   dL = dx,  df = dx 1,  dg = dx^T 1
//   for t = T-1 .. 0:
//     A = exp(L + f^t 1^T + 1 g^t^T)        (row step t: f^t = -LSE_j(L + g^t))
//     dL -= df 1^T * A,  dg <- dg - A^T df   (adjoint of a softmax: dx = dy - softmax * sum dy)
//     C = exp(L + f^{t-1} 1^T + 1 g^t^T)    (column step t: g^t = -LSE_i(L + f^{t-1}), f^{-1} = 0)
//     dL -= C * 1 dg^T,  df <- -C dg,  dg <- 0
//   d scores = dL / tau.
// C differs from A by the row factor exp(f^{t-1}_i - f^t_i), so each iteration costs one exp per
// element; A is kept in a scratch matrix until the column step reads it. The column step of t and
// the row step of t-1 share one row-by-row pass, so an iteration reads the matrices once.
// A batch smaller than the thread count splits every pass by rows, as the forward does.
//
// That sweep is the fallback: a matrix of side <= kScalingMaxN whose scores and potentials are in
// range runs the same sweep in the scaling domain (cpu/sinkhorn_scaling.cpp), one
// matrix-vector product per half-step instead of one exp per element.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/sinkhorn_cpu.h"
#include "cpu/sinkhorn_scaling.h"

namespace deepalign::cpu {
namespace {

// Rows whose factor exp(f^{t-1} - f^t) is larger or smaller than e^10 recompute C with exp, so
// that small entries of A do not underflow into a wrong C.
template <typename T>
constexpr T kMaxShift = T(10);

// Column potentials with -inf in a tail's padding lanes: their exp is then 0, not exp(f_i),
// which overflows for large potentials and would put 0 * inf = NaN into the row sums.
template <typename T, typename C>
DA_INLINE Vec<T> load_g(const T* g, C count) {
  return load_partial(g, count, -std::numeric_limits<T>::infinity());
}

struct Rows {
  int64_t r0, r1;
};

// dL = scale * G * P, df = row sums of G * P, dg += column sums (rows r0..r1).
template <typename T>
DA_SIMD_CLONES void start(const T* s, const T* gp, const T* f, const T* g, T* dl, T* df, T* dg,
                          int64_t n, T k, T scale, Rows r) {
  for (int64_t i = r.r0; i < r.r1; ++i) {
    const T fi = f[i];
    Vec<T> rs{};
    for_chunks<T>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const int64_t o = i * n + j;
      const Vec<T> x = load_partial(s + o, c, T(0)) * k + (load_g(g + j, c) + fi);
      const Vec<T> dx = vexp<T>(x) * load_partial(gp + o, c, T(0));
      store_partial(dl + o, dx * scale, c);
      store_partial(dg + j, load_partial(dg + j, c, T(0)) + dx, c);
      rs += dx;
    });
    df[i] = hsum<T>(rs);
  }
}

// Adjoint of row step t on row i: A = exp(L + f^t + g^t) into w; dL -= df_i A; dg -= A^T df.
template <typename T>
DA_INLINE void row_adjoint_row(const T* s, const T* f, const T* g, T* w, T* dl, const T* df,
                               T* dg, int64_t n, T k, int64_t i) {
  const T fi = f[i], dfi = df[i];
  for_chunks<T>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
    const int64_t o = i * n + j;
    const Vec<T> a =
        vexp_bounded<T>(load_partial(s + o, c, T(0)) * k + (load_g(g + j, c) + fi));
    const Vec<T> da = a * dfi;
    store_partial(w + o, a, c);
    store_partial(dl + o, load_partial(dl + o, c, T(0)) - da, c);
    store_partial(dg + j, load_partial(dg + j, c, T(0)) - da, c);
  });
}

// Adjoint of column step t on row i: C = A * exp(f^{t-1} - f^t) with A from w;
// dL = (dL - C dg) * scale; df_i = -(C dg)_i.
template <typename T>
DA_INLINE void col_adjoint_row(const T* s, const T* fprev, const T* f, const T* g, const T* w,
                               T* dl, const T* dg, T* df, int64_t n, T k, T scale, int64_t i) {
  const T fp = fprev[i], shift = fprev[i] - f[i];
  const bool reuse = std::abs(shift) <= kMaxShift<T>;
  const T factor = std::exp(shift);
  Vec<T> acc{};
  for_chunks<T>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
    const int64_t o = i * n + j;
    const Vec<T> cm = reuse ? load_partial(w + o, c, T(0)) * factor
                            : vexp_bounded<T>(load_partial(s + o, c, T(0)) * k +
                                              (load_g(g + j, c) + fp));
    const Vec<T> d = cm * load_partial(dg + j, c, T(0));
    store_partial(dl + o, (load_partial(dl + o, c, T(0)) - d) * scale, c);
    acc += d;
  });
  df[i] = -hsum<T>(acc);
}

// The potentials of one half-step pair as the adjoint kernels read them.
template <typename T>
struct Step {
  const T *f_prev, *f, *g;  // f^{t-1}, f^t, g^t
};

template <typename T>
DA_SIMD_CLONES void row_adjoint(const T* s, Step<T> st, T* w, T* dl, const T* df, T* dg,
                                int64_t n, T k, Rows r) {
  for (int64_t i = r.r0; i < r.r1; ++i) row_adjoint_row(s, st.f, st.g, w, dl, df, dg, n, k, i);
}

template <typename T>
DA_SIMD_CLONES void col_adjoint(const T* s, Step<T> st, const T* w, T* dl, const T* dg, T* df,
                                int64_t n, T k, T scale, Rows r) {
  for (int64_t i = r.r0; i < r.r1; ++i)
    col_adjoint_row(s, st.f_prev, st.f, st.g, w, dl, dg, df, n, k, scale, i);
}

// Column step t then row step t-1, row by row: df_i of step t-1 is complete after the first
// half, so the second half runs while the row is still in L1 (one pass per iteration).
template <typename T>
DA_SIMD_CLONES void col_row_adjoint(const T* s, Step<T> st, Step<T> prev, T* w, T* dl,
                                    const T* dg, T* dg_prev, T* df, int64_t n, T k, Rows r) {
  for (int64_t i = r.r0; i < r.r1; ++i) {
    col_adjoint_row(s, st.f_prev, st.f, st.g, w, dl, dg, df, n, k, T(1), i);
    row_adjoint_row(s, prev.f, prev.g, w, dl, df, dg_prev, n, k, i);
  }
}

template <typename T>
struct Reverse {
  const T *s, *gp, *row_pot, *col_pot, *zeros;
  T *dl, *df, *dg;  // dg: (2, B, blocks, n), two banks of partial column sums
  int64_t batch, n, n_iters, blocks;
  T k;
  T* w = nullptr;  // scratch for A: one matrix per batch entry, or one per thread (w_stride 0)
  int64_t w_stride = 0;

  Rows rows(int64_t blk) const {
    auto [r0, r1] = block_rows(n, blocks, blk);
    return {r0, r1};
  }
  const T* f(int64_t b, int64_t t) const { return t < 0 ? zeros : row_pot + (b * n_iters + t) * n; }
  Step<T> step(int64_t b, int64_t t) const {
    return {f(b, t - 1), f(b, t), col_pot + (b * n_iters + t) * n};
  }
  T* part(int64_t bank, int64_t b, int64_t blk) const {
    return dg + ((bank * batch + b) * blocks + blk) * n;
  }
  int64_t off(int64_t b) const { return b * n * n; }
  T* wmat(int64_t b) const { return w + b * w_stride; }

  void start_block(int64_t b, int64_t blk) const {
    const int64_t last = n_iters - 1;
    start(s + off(b), gp + off(b), last < 0 ? zeros : f(b, last),
          last < 0 ? zeros : step(b, last).g, dl + off(b), df + b * n, part(0, b, blk), n, k,
          n_iters ? T(1) : k, rows(blk));
  }
  void row_block(int64_t b, int64_t blk, int64_t t) const {
    row_adjoint(s + off(b), step(b, t), wmat(b), dl + off(b), df + b * n, part(0, b, blk), n,
                k, rows(blk));
  }
  // Iteration t's column step and t-1's row step; dg of step t is bank `bank`, block 0.
  void fused_block(int64_t b, int64_t blk, int64_t t, int64_t bank) const {
    col_row_adjoint(s + off(b), step(b, t), step(b, t - 1), wmat(b), dl + off(b),
                    part(bank, b, 0), part(1 - bank, b, blk), df + b * n, n, k, rows(blk));
  }
  void col_block(int64_t b, int64_t blk, int64_t bank) const {
    col_adjoint(s + off(b), step(b, 0), wmat(b), dl + off(b), part(bank, b, 0), df + b * n, n,
                k, k, rows(blk));
  }
  // Sum the block partials of a bank into its block 0.
  void reduce(int64_t bank, int64_t b) const {
    for (int64_t blk = 1; blk < blocks; ++blk)
      for (int64_t j = 0; j < n; ++j) part(bank, b, 0)[j] += part(bank, b, blk)[j];
  }
  void clear(int64_t bank, int64_t b) const {
    std::fill(part(bank, b, 0), part(bank, b, 0) + blocks * n, T(0));
  }
};

// Runs the reverse sweep with each pass as stage(b, blk) over all blocks; `between(bank)` sums
// the dg partials of a bank when a pass is split over row blocks.
template <typename T, typename Pass, typename Between>
void sweep(const Reverse<T>& rv, const Pass& pass, const Between& between) {
  pass([&](int64_t b, int64_t blk) { rv.start_block(b, blk); });
  if (rv.n_iters == 0) return;
  pass([&](int64_t b, int64_t blk) { rv.row_block(b, blk, rv.n_iters - 1); });
  between(0);
  int64_t bank = 0;
  for (int64_t t = rv.n_iters - 1; t >= 1; --t, bank = 1 - bank) {
    pass([&](int64_t b, int64_t blk) { rv.fused_block(b, blk, t, bank); });
    between(1 - bank);
  }
  pass([&](int64_t b, int64_t blk) { rv.col_block(b, blk, bank); });
}

// Matrix b in the scaling domain if it is in range, else (blocks == 1) by the log-domain sweep
// with a scratch matrix of this thread's own. Returns whether b is done.
template <typename T>
struct PerMatrix {
  ScalingScratch scaling;
  std::vector<T> w;

  bool run(const Reverse<T>& rv, int64_t b) {
    const int64_t pots = b * rv.n_iters * rv.n;
    if (scaling_backward(rv.s + rv.off(b), rv.gp + rv.off(b), rv.row_pot + pots,
                         rv.col_pot + pots, rv.dl + rv.off(b), rv.n, rv.n_iters, double(rv.k),
                         scaling))
      return true;
    if (rv.blocks != 1) return false;
    w.resize(rv.n * rv.n);
    Reverse<T> own = rv;
    own.w = w.data();
    own.w_stride = 0;
    sweep(own, [&](const auto& fn) { fn(b, 0); }, [&](int64_t bank) { own.clear(1 - bank, b); });
    return true;
  }
};

template <typename T>
void reverse(const Reverse<T>& rv) {
  const int64_t batch = rv.batch;
  std::vector<char> done(batch, 0);
  parallel_dynamic(
      batch, [] { return PerMatrix<T>{}; },
      [&](PerMatrix<T>& pm, int64_t b) { done[b] = pm.run(rv, b); });
  if (std::all_of(done.begin(), done.end(), [](char d) { return d; })) return;
  // A small batch outside the scaling range: every pass split by rows over the threads.
  std::vector<T> w(batch * rv.n * rv.n);
  Reverse<T> split = rv;
  split.w = w.data();
  split.w_stride = rv.n * rv.n;
  sweep(split, [&](const auto& fn) { for_blocks(batch, split.blocks, fn); },
        [&](int64_t bank) {
          for (int64_t b = 0; b < batch; ++b) {
            split.reduce(bank, b);
            split.clear(1 - bank, b);
          }
        });
}

}  // namespace

Tensor sinkhorn_project_backward_cpu(const Tensor& grad_p, const Tensor& scores,
                                     const Tensor& row_pot, const Tensor& col_pot,
                                     int64_t n_iters, double tau) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  DA_CHECK_REAL(scores, "scores");
  DA_CHECK_ITERS(n_iters);
  DA_CHECK_TAU(tau);
  const int64_t batch = scores.size(0), n = scores.size(1);
  DA_CHECK(same_shape(grad_p, scores), "grad_p must have the shape of scores ",
           shape(scores), ", got ", shape(grad_p));
  for (const auto* pot : {&row_pot, &col_pot})
    DA_CHECK(has_shape(*pot, {batch, n_iters, n}),
             "row_pot and col_pot must be (B, n_iters, n) = (", batch, ", ", n_iters, ", ", n,
             "), got ", shape(*pot));
  DA_CHECK_SAME_DTYPE(grad_p, scores, "grad_p", "scores");
  DA_CHECK_SAME_DTYPE(row_pot, scores, "row_pot", "scores");
  DA_CHECK_SAME_DTYPE(col_pot, scores, "col_pot", "scores");
  const Tensor s = torch::stable::contiguous(scores), gp = torch::stable::contiguous(grad_p);
  const Tensor rp = torch::stable::contiguous(row_pot), cp = torch::stable::contiguous(col_pot);
  Tensor dl = torch::stable::empty_like(s);
  if (batch == 0 || n == 0) return dl;
  const int64_t blocks = sinkhorn_row_blocks(batch, n);
  Tensor df = torch::stable::new_empty(s, {batch, n});
  Tensor dg = torch::stable::new_zeros(s, {2, batch, blocks, n});
  Tensor zeros = torch::stable::new_zeros(s, {n});
  dispatch_real(s.scalar_type(), "sinkhorn_project_backward_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    Reverse<scalar_t> rv{s.const_data_ptr<scalar_t>(),     gp.const_data_ptr<scalar_t>(),
                         rp.const_data_ptr<scalar_t>(),    cp.const_data_ptr<scalar_t>(),
                         zeros.const_data_ptr<scalar_t>(), dl.mutable_data_ptr<scalar_t>(),
                         df.mutable_data_ptr<scalar_t>(), dg.mutable_data_ptr<scalar_t>(),
                         batch,                            n,
                         n_iters,                          blocks,
                         scalar_t(1.0 / tau)};
    reverse(rv);
  });
  return dl;
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("_sinkhorn_project_backward", TORCH_BOX(&sinkhorn_project_backward_cpu));
}

}  // namespace deepalign::cpu
