// Sinkhorn and its unrolled backward in the scaling domain, one matrix at a time: the fast path
// of the CPU kernels (cpu/sinkhorn_cpu.h gives the log-domain semantics both reproduce).
//
// With L = scores / tau, M = max L and K = exp(L - M), every half-step matrix of the forward is K
// scaled on both sides, and the log-domain potentials are logs of the scalings:
//   column step t:  V^t = 1 / (K^T U^{t-1}),   g^t = log V^t - M     (U^{-1} = 1)
//   row step t:     U^t = 1 / (K V^t),         f^t = log U^t
//   A^t = diag(U^t) K diag(V^t) after row step t, C^t = diag(U^{t-1}) K diag(V^t) after column
//   step t, and P = A^{last}.
// So a half-step is one matrix-vector product instead of one exp per element. Row step t and
// column step t+1 share one pass over K: row i's dot product gives U_i, which is at once added,
// times row i, into the next column sums.
//
// The backward (the log-domain sweep of sinkhorn_project_backward_cpu.cpp) subtracts
// diag(x) K diag(y) from dL at each adjoint step and needs one reduction there:
//   row step t:     x = df * U^t,   y = V^t,        dg = -(y * (K^T x))   (dg was 0)
//   column step t:  x = U^{t-1},    y = V^t * dg,   df = -(x * (K y))
// Column step t and row step t-1 share one pass the same way. The 2 n_iters rank-one terms are
// summed at the end as one product:  d scores = (G * P - K * (X Y^T)) / tau.
//
// Everything runs in float64. Every half-step matrix has entries <= 1, so U_i V_j <= 1 / K_ij;
// bounding the spread of L and the potentials by kMaxLog keeps every factor and product far
// inside float64's range, and the terms summed are the log domain's own.
#include "cpu/sinkhorn_scaling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/simd.h"

namespace deepalign::cpu {
namespace {

// e^300: far from float64's e^709 even for the products of two factors that the bound allows.
constexpr double kMaxLog = 300;

using VD = Vec<double>;
constexpr int64_t kW = Simd<double>::kLanes;
// Rows of K and Y are padded with zeros to a multiple of this (the column block of finish).
constexpr int64_t kBlock = 4 * kW;

typedef float F8 __attribute__((vector_size(32)));  // kW floats

// p[0, count) widened to float64, zeros beyond.
template <typename T>
DA_INLINE VD load_f64(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, double>) {
    return load_partial(p, count, 0.0);
  } else {
    F8 v{};
    if (count == kW)  // a fixed-size copy is one vector load, a variable one a call
      std::memcpy(&v, p, sizeof(v));
    else
      std::memcpy(&v, p, sizeof(float) * count);
    return __builtin_convertvector(v, VD);
  }
}

template <typename T>
DA_INLINE void store_f64(T* p, VD v, int64_t count) {
  if constexpr (std::is_same_v<T, double>) {
    store_partial(p, v, count);
  } else {
    const F8 f = __builtin_convertvector(v, F8);
    if (count == kW)
      std::memcpy(p, &f, sizeof(f));
    else
      std::memcpy(p, &f, sizeof(float) * count);
  }
}

// Whether k * s spans at most kMaxLog (false for NaN or inf); sets hi = max k * s.
template <typename T>
DA_SIMD_CLONES bool scores_in_range(const T* s, int64_t n, double k, double* hi) {
  VD lane;
  for (int l = 0; l < kW; ++l) lane[l] = l;
  VD top = splat(-HUGE_VAL), bottom = splat(HUGE_VAL);
  typename Simd<double>::I nan{};
  for (int64_t i = 0; i < n; ++i)
    for_chunks<double>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const VD x = load_f64(s + i * n + j, c) * k;
      const auto valid = lane < double(c);  // a tail's padding lanes must not count
      nan |= x != x;
      top = valid && x > top ? x : top;
      bottom = valid && x < bottom ? x : bottom;
    });
  double lo = HUGE_VAL;
  *hi = -HUGE_VAL;
  for (int l = 0; l < kW; ++l) {
    if (nan[l]) return false;
    *hi = std::max(*hi, top[l]), lo = std::min(lo, bottom[l]);
  }
  // Overflowing T's range after dividing by tau is the log domain's error to raise.
  const double limit = std::numeric_limits<T>::max();
  return *hi - lo <= kMaxLog && *hi <= limit && lo >= -limit;
}

// K_ij = exp(k s_ij - hi), rows padded with zeros to `pad`.
template <typename T>
DA_SIMD_CLONES void kernel_matrix(const T* s, double* kmat, int64_t n, int64_t pad, double k,
                                  double hi) {
  for (int64_t i = 0; i < n; ++i) {
    double* row = kmat + i * pad;
    std::fill(row + n, row + pad, 0.0);
    for_chunks<double>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      store_partial(row + j, vexp_bounded<double>(load_f64(s + i * n + j, c) * k - hi), c);
    });
  }
}

// out[i] = exp(pot[i] + shift) for i < n, 0 up to pad.
template <typename T>
DA_SIMD_CLONES void exp_potential(const T* pot, double shift, double* out, int64_t n,
                                  int64_t pad) {
  for_chunks<double>(n, [&](int64_t i, auto c) DA_LAMBDA_INLINE {
    store_partial(out + i, vexp_bounded<double>(load_f64(pot + i, c) + shift), c);
  });
  std::fill(out + n, out + pad, 0.0);
}

// pot[i] = log(x[i]) + shift for i < n; false if some |log x[i]| exceeds kMaxLog (or is NaN).
template <typename T>
DA_SIMD_CLONES bool log_potential(const double* x, double shift, T* pot, int64_t n) {
  typename Simd<double>::I out{};
  for_chunks<double>(n, [&](int64_t i, auto c) DA_LAMBDA_INLINE {
    const VD l = vlog(load_partial(x + i, c, 1.0));
    out |= !((l < 0 ? -l : l) <= kMaxLog);
    store_f64(pot + i, l + shift, c);
  });
  for (int l = 0; l < kW; ++l)
    if (out[l]) return false;
  return true;
}

// One pass over K: d_i = K_i . y, x_i = coef(i, d_i) and acc = K^T x (padded). Four rows at a
// time: four independent dot products, then one update of acc for the four.
template <typename Coef>
DA_INLINE void dot_then_axpy(const double* kmat, const double* y, double* x, double* acc,
                             int64_t n, int64_t pad, const Coef& coef) {
  std::fill(acc, acc + pad, 0.0);
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    const int64_t rows = std::min<int64_t>(4, n - i0);
    const double* r[4];
    for (int64_t q = 0; q < 4; ++q) r[q] = kmat + (i0 + std::min(q, rows - 1)) * pad;
    VD d0{}, d1{}, d2{}, d3{};
    for (int64_t j = 0; j < pad; j += kW) {
      const VD yj = load(y + j);
      d0 += load(r[0] + j) * yj, d1 += load(r[1] + j) * yj, d2 += load(r[2] + j) * yj,
          d3 += load(r[3] + j) * yj;
    }
    const double d[4] = {hsum<double>(d0), hsum<double>(d1), hsum<double>(d2), hsum<double>(d3)};
    VD xv[4];
    for (int64_t q = 0; q < 4; ++q) {  // rows past n repeat the last one with weight 0
      const double xq = q < rows ? coef(i0 + q, d[q]) : 0.0;
      if (q < rows) x[i0 + q] = xq;
      xv[q] = splat(xq);
    }
    for (int64_t j = 0; j < pad; j += kW)
      store(acc + j, load(acc + j) + xv[0] * load(r[0] + j) + xv[1] * load(r[1] + j) +
                         xv[2] * load(r[2] + j) + xv[3] * load(r[3] + j));
  }
}

// The one pass of each iteration (see the header comment), as a function of its own so that it
// is compiled for each instruction set.
DA_SIMD_CLONES void forward_pass(const double* kmat, const double* v, double* u, double* colsum,
                                 int64_t n, int64_t pad) {
  dot_then_axpy(kmat, v, u, colsum, n, pad, [](int64_t, double d) { return 1.0 / d; });
}

// x_i = -w_i d_i with d = K y; acc = K^T x. With w = U^{t-1} squared, y = V^t * dg: x is the row
// step t-1 coefficient df * U^{t-1}, where df = -U^{t-1} * (K y) is column step t's.
DA_SIMD_CLONES void backward_pass(const double* kmat, const double* y, const double* w,
                                  double* x, double* acc, int64_t n, int64_t pad) {
  dot_then_axpy(kmat, y, x, acc, n, pad, [&](int64_t i, double d) { return -w[i] * d; });
}

// acc = K^T x for a given, padded x (the pass's dot products go unused: once per matrix).
DA_SIMD_CLONES void transposed_product(const double* kmat, double* x, double* acc, int64_t n,
                                       int64_t pad) {
  dot_then_axpy(kmat, x, x, acc, n, pad, [&](int64_t i, double) { return x[i]; });
}

// d scores: ds_ij = k K_ij (G_ij u_i v_j - (X Y^T)_ij), xs = X row-major (n, steps), ys = Y
// (steps, pad). One block of columns at a time, so that Y's block (steps x kBlock) stays in L1
// while all rows pass; two rows share each load of it, and their eight accumulators hide the
// FMA latency.
template <typename T>
DA_SIMD_CLONES void finish(const double* kmat, const double* u, const double* v, const T* gp,
                           const double* xs, const double* ys, T* ds, int64_t n, int64_t pad,
                           int64_t steps, double k) {
  for (int64_t j = 0; j < n; j += kBlock) {
    for (int64_t i = 0; i < n; i += 2) {
      const int64_t rows = std::min<int64_t>(2, n - i);
      const double *x0 = xs + i * steps, *x1 = xs + (i + rows - 1) * steps;
      VD acc[2][4]{};
      for (int64_t m = 0; m < steps; ++m) {
        const VD p = splat(x0[m]), q = splat(x1[m]);
        const double* y = ys + m * pad + j;
        for (int c = 0; c < 4; ++c) {
          const VD yc = load(y + c * kW);
          acc[0][c] += p * yc, acc[1][c] += q * yc;
        }
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < 4 && j + c * kW < n; ++c) {
          const int64_t col = j + c * kW, o = (i + r) * n + col;
          const int64_t count = std::min<int64_t>(kW, n - col);
          const VD e = load(v + col) * u[i + r] * load_f64(gp + o, count) - acc[r][c];
          store_f64(ds + o, load(kmat + (i + r) * pad + col) * e * k, count);
        }
    }
  }
}

// dx = G * P on every row (P = diag(u) K diag(v)): df = row sums, dg = column sums.
template <typename T>
DA_SIMD_CLONES void start(const T* gp, const double* kmat, const double* u, const double* v,
                          double* df, double* dg, int64_t n, int64_t pad) {
  std::fill(dg, dg + pad, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    VD rs{};
    for_chunks<double>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const VD dx = load_f64(gp + i * n + j, c) * u[i] * load(kmat + i * pad + j) * load(v + j);
      store(dg + j, load(dg + j) + dx);
      rs += dx;
    });
    df[i] = hsum<double>(rs);
  }
}

// p = diag(u) K diag(v).
template <typename T>
DA_SIMD_CLONES void write_plan(const double* kmat, const double* u, const double* v, T* p,
                               int64_t n, int64_t pad) {
  for (int64_t i = 0; i < n; ++i)
    for_chunks<double>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      store_f64(p + i * n + j, load(kmat + i * pad + j) * load(v + j) * u[i], c);
    });
}

// Sizes the scratch for an n x n problem; returns the padded row length.
int64_t prepare(ScalingScratch& sc, int64_t n, int64_t steps) {
  const int64_t pad = (n + kBlock - 1) / kBlock * kBlock;
  sc.kmat.resize(n * pad);
  sc.xs.resize(n * steps);
  sc.ys.resize(steps * pad);
  for (auto* vec : {&sc.u, &sc.v, &sc.x, &sc.acc, &sc.dg}) vec->assign(pad, 0.0);
  return pad;
}

}  // namespace

template <typename T>
bool scaling_forward(const T* s, T* p, T* row_pot, T* col_pot, int64_t n, int64_t n_iters,
                     double k, ScalingScratch& sc) {
  double hi;
  if (n_iters == 0 || n > kScalingMaxN || !scores_in_range(s, n, k, &hi)) return false;
  const int64_t pad = prepare(sc, n, 0);
  double *kmat = sc.kmat.data(), *u = sc.u.data(), *v = sc.v.data(), *colsum = sc.acc.data();
  kernel_matrix(s, kmat, n, pad, k, hi);
  std::fill(u, u + n, 1.0);
  transposed_product(kmat, u, colsum, n, pad);
  for (int64_t t = 0; t < n_iters; ++t) {
    for (int64_t j = 0; j < n; ++j) v[j] = 1.0 / colsum[j];
    forward_pass(kmat, v, u, colsum, n, pad);
    if (!log_potential(v, -hi, col_pot + t * n, n) || !log_potential(u, 0.0, row_pot + t * n, n))
      return false;
  }
  write_plan(kmat, u, v, p, n, pad);
  return true;
}

template <typename T>
bool scaling_backward(const T* s, const T* gp, const T* row_pot, const T* col_pot, T* ds,
                      int64_t n, int64_t n_iters, double k, ScalingScratch& sc) {
  double hi;
  if (n_iters == 0 || n > kScalingMaxN || !scores_in_range(s, n, k, &hi)) return false;
  for (int64_t e = 0; e < n_iters * n; ++e)  // the potentials' bound (header comment)
    if (!(std::abs(double(row_pot[e])) <= kMaxLog && std::abs(col_pot[e] + hi) <= kMaxLog))
      return false;
  const int64_t steps = 2 * n_iters, pad = prepare(sc, n, steps);
  double *kmat = sc.kmat.data(), *u = sc.u.data(), *v = sc.v.data(), *x = sc.x.data(),
         *acc = sc.acc.data();
  double* dg = sc.dg.data();
  kernel_matrix(s, kmat, n, pad, k, hi);
  // Rank-one term m: column m of X (stored row-major as xs[i, m]) and row m of Y.
  auto record = [&](int64_t m, const double* xm, const double* ym) {
    for (int64_t i = 0; i < n; ++i) sc.xs[i * steps + m] = xm[i];
    std::copy(ym, ym + pad, sc.ys.data() + m * pad);
  };
  const int64_t last = n_iters - 1;
  exp_potential(row_pot + last * n, 0.0, u, n, pad);
  exp_potential(col_pot + last * n, hi, v, n, pad);
  start(gp, kmat, u, v, acc, dg, n, pad);  // acc holds df here
  for (int64_t i = 0; i < n; ++i) x[i] = acc[i] * u[i];  // row step `last`: x = df * U
  transposed_product(kmat, x, acc, n, pad);
  record(2 * last + 1, x, v);
  for (int64_t j = 0; j < n; ++j) dg[j] -= v[j] * acc[j];
  for (int64_t t = last; t >= 0; --t) {
    // Column step t: x = U^{t-1}, y = V^t * dg, with V^t in v.
    if (t > 0)
      exp_potential(row_pot + (t - 1) * n, 0.0, u, n, pad);
    else
      std::fill(u, u + n, 1.0);
    for (int64_t j = 0; j < n; ++j) v[j] *= dg[j];
    record(2 * t, u, v);
    if (t == 0) break;  // df of the first column step is not needed
    for (int64_t i = 0; i < n; ++i) u[i] *= u[i];
    backward_pass(kmat, v, u, x, acc, n, pad);
    exp_potential(col_pot + (t - 1) * n, hi, v, n, pad);  // row step t-1: y = V^{t-1}
    record(2 * t - 1, x, v);
    for (int64_t j = 0; j < n; ++j) dg[j] = -v[j] * acc[j];
  }
  exp_potential(row_pot + last * n, 0.0, u, n, pad);
  exp_potential(col_pot + last * n, hi, v, n, pad);
  finish(kmat, u, v, gp, sc.xs.data(), sc.ys.data(), ds, n, pad, steps, k);
  return true;
}

#define DA_INSTANTIATE(T)                                                                   \
  template bool scaling_forward<T>(const T*, T*, T*, T*, int64_t, int64_t, double,           \
                                   ScalingScratch&);                                        \
  template bool scaling_backward<T>(const T*, const T*, const T*, const T*, T*, int64_t,     \
                                    int64_t, double, ScalingScratch&);
DA_INSTANTIATE(float)
DA_INSTANTIATE(double)
#undef DA_INSTANTIATE

}  // namespace deepalign::cpu
