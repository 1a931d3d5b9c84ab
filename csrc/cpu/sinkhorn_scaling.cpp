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
// Every half-step matrix has entries <= 1, so U_i V_j <= 1 / K_ij: bounding the spread of L and
// the potentials (Range) keeps every factor and product far inside the range of the compute
// type C, and the terms summed are the log domain's own. C is float64, or float32 for float32
// scores of small spread (half the memory traffic and twice the lanes; its rounding is that of
// the float32 log-domain kernel).
#include "cpu/sinkhorn_scaling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/simd.h"

namespace deepalign::cpu {
namespace {

// The bounds of the header comment for compute type C: the spread of L and |potential|. float64:
// e^300, far from its e^709 even for products of two factors. float32 (e^88): spread <= 30 and
// potentials <= 40 keep U_i V_j <= e^30 and U, V <= e^40, with room for the gradients of the
// backward (which also bounds |G|: kMaxGrad).
template <typename C>
struct Range;
template <>
struct Range<double> {
  static constexpr double kSpread = 300, kPotential = 300;
};
template <>
struct Range<float> {
  static constexpr double kSpread = 30, kPotential = 40, kMaxGrad = 1e12;
};

template <typename C>
constexpr int64_t kLanes = Simd<C>::kLanes;
// Rows of K and Y are padded with zeros to a multiple of this (the column block of finish).
template <typename C>
constexpr int64_t kBlock = 4 * kLanes<C>;

// p[0, count) as C (zeros beyond): T is C, or float widened to double.
template <typename C, typename T>
DA_INLINE Vec<C> load_as(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, C>) {
    return load_partial(p, count, C(0));
  } else {
    typedef T Narrow __attribute__((vector_size(sizeof(T) * kLanes<C>)));
    Narrow v{};
    if (count == kLanes<C>)  // a fixed-size copy is one vector load, a variable one a call
      std::memcpy(&v, p, sizeof(v));
    else
      std::memcpy(&v, p, sizeof(T) * count);
    return __builtin_convertvector(v, Vec<C>);
  }
}

template <typename C, typename T>
DA_INLINE void store_as(T* p, Vec<C> v, int64_t count) {
  if constexpr (std::is_same_v<T, C>) {
    store_partial(p, v, count);
  } else {
    typedef T Narrow __attribute__((vector_size(sizeof(T) * kLanes<C>)));
    const Narrow f = __builtin_convertvector(v, Narrow);
    if (count == kLanes<C>)
      std::memcpy(p, &f, sizeof(f));
    else
      std::memcpy(p, &f, sizeof(T) * count);
  }
}

DA_INLINE Vec<float> vlog_natural(Vec<float> x) { return vlog2(x) * 0.6931471805599453f; }
DA_INLINE Vec<double> vlog_natural(Vec<double> x) { return vlog(x); }

// Sets hi, lo = max, min of k * s; false for NaN, or if k * s overflows T (the log domain's
// error to raise).
template <typename T>
DA_SIMD_CLONES bool scores_extremes(const T* s, int64_t n, double k, double* hi, double* lo) {
  using VD = Vec<double>;
  constexpr int64_t W = kLanes<double>;
  VD lane;
  for (int l = 0; l < W; ++l) lane[l] = l;
  VD top = splat(-HUGE_VAL), bottom = splat(HUGE_VAL);
  typename Simd<double>::I nan{};
  for (int64_t i = 0; i < n; ++i)
    for_chunks<double>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const VD x = load_as<double>(s + i * n + j, c) * k;
      const auto valid = lane < double(c);  // a tail's padding lanes must not count
      nan |= x != x;
      top = valid && x > top ? x : top;
      bottom = valid && x < bottom ? x : bottom;
    });
  *hi = -HUGE_VAL, *lo = HUGE_VAL;
  for (int l = 0; l < W; ++l) {
    if (nan[l]) return false;
    *hi = std::max(*hi, top[l]), *lo = std::min(*lo, bottom[l]);
  }
  const double limit = std::numeric_limits<T>::max();
  return *hi <= limit && *lo >= -limit;
}

// K_ij = exp(k s_ij - hi), rows padded with zeros to `pad`.
template <typename C, typename T>
DA_SIMD_CLONES void kernel_matrix(const T* s, C* kmat, int64_t n, int64_t pad, double k,
                                  double hi) {
  for (int64_t i = 0; i < n; ++i) {
    C* row = kmat + i * pad;
    std::fill(row + n, row + pad, C(0));
    for_chunks<C>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      // The argument in T's precision (exact for double; float keeps the log domain's rounding).
      store_partial(row + j, vexp_bounded<C>(load_as<C>(s + i * n + j, c) * C(k) - C(hi)), c);
    });
  }
}

// out[i] = exp(pot[i] + shift) for i < n, 0 up to pad.
template <typename C, typename T>
DA_SIMD_CLONES void exp_potential(const T* pot, double shift, C* out, int64_t n, int64_t pad) {
  for_chunks<C>(n, [&](int64_t i, auto c) DA_LAMBDA_INLINE {
    store_partial(out + i, vexp_bounded<C>(load_as<C>(pot + i, c) + C(shift)), c);
  });
  std::fill(out + n, out + pad, C(0));
}

// pot[i] = log(x[i]) + shift for i < n; false if some |log x[i]| exceeds the bound (or is NaN).
template <typename C, typename T>
DA_SIMD_CLONES bool log_potential(const C* x, double shift, T* pot, int64_t n) {
  typename Simd<C>::I out{};
  for_chunks<C>(n, [&](int64_t i, auto c) DA_LAMBDA_INLINE {
    const Vec<C> l = vlog_natural(load_partial(x + i, c, C(1)));
    out |= !((l < 0 ? -l : l) <= C(Range<C>::kPotential));
    store_as<C>(pot + i, l + C(shift), c);
  });
  for (int l = 0; l < kLanes<C>; ++l)
    if (out[l]) return false;
  return true;
}

// One pass over K: d_i = K_i . y, x_i = coef(i, d_i) and acc = K^T x (padded). kGroup rows at a
// time: independent dot products (whose lane sums and coefficients overlap), then one update of
// acc for the group, with the rows still in L1.
constexpr int64_t kGroup = 4;

template <typename C, typename Coef>
DA_INLINE void dot_then_axpy(const C* kmat, const C* y, C* x, C* acc, int64_t n, int64_t pad,
                             const Coef& coef) {
  constexpr int64_t W = kLanes<C>;
  std::fill(acc, acc + pad, C(0));
  for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
    const int64_t rows = std::min<int64_t>(kGroup, n - i0);
    const C* r[kGroup];
    for (int64_t q = 0; q < kGroup; ++q) r[q] = kmat + (i0 + std::min(q, rows - 1)) * pad;
    Vec<C> d[kGroup]{};
    for (int64_t j = 0; j < pad; j += W) {
      const Vec<C> yj = load(y + j);
      for (int64_t q = 0; q < kGroup; ++q) d[q] += load(r[q] + j) * yj;
    }
    Vec<C> xv[kGroup];
    for (int64_t q = 0; q < kGroup; ++q) {  // rows past n repeat the last one with weight 0
      const C xq = q < rows ? coef(i0 + q, hsum<C>(d[q])) : C(0);
      if (q < rows) x[i0 + q] = xq;
      xv[q] = splat(xq);
    }
    for (int64_t j = 0; j < pad; j += W) {
      Vec<C> a = load(acc + j);
      for (int64_t q = 0; q < kGroup; ++q) a += xv[q] * load(r[q] + j);
      store(acc + j, a);
    }
  }
}

// The one pass of each iteration (see the header comment), as a function of its own so that it
// is compiled for each instruction set.
template <typename C>
DA_SIMD_CLONES void forward_pass(const C* kmat, const C* v, C* u, C* colsum, int64_t n,
                                 int64_t pad) {
  dot_then_axpy(kmat, v, u, colsum, n, pad, [](int64_t, C d) { return C(1) / d; });
}

// x_i = -w_i d_i with d = K y; acc = K^T x. With w = U^{t-1} squared, y = V^t * dg: x is the row
// step t-1 coefficient df * U^{t-1}, where df = -U^{t-1} * (K y) is column step t's.
template <typename C>
DA_SIMD_CLONES void backward_pass(const C* kmat, const C* y, const C* w, C* x, C* acc, int64_t n,
                                  int64_t pad) {
  dot_then_axpy(kmat, y, x, acc, n, pad, [&](int64_t i, C d) { return -w[i] * d; });
}

// acc = K^T x for a given, padded x (the pass's dot products go unused: once per matrix).
template <typename C>
DA_SIMD_CLONES void transposed_product(const C* kmat, C* x, C* acc, int64_t n, int64_t pad) {
  dot_then_axpy(kmat, x, x, acc, n, pad, [&](int64_t i, C) { return x[i]; });
}

// dx = G * P on every row (P = diag(u) K diag(v)): df = row sums, dg = column sums. Returns
// max |G| (NaN entries, which make the result NaN on any path, are not counted).
template <typename C, typename T>
DA_SIMD_CLONES C start(const T* gp, const C* kmat, const C* u, const C* v, C* df, C* dg,
                       int64_t n, int64_t pad) {
  std::fill(dg, dg + pad, C(0));
  Vec<C> big{};
  for (int64_t i = 0; i < n; ++i) {
    Vec<C> rs{};
    for_chunks<C>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      const Vec<C> g = load_as<C>(gp + i * n + j, c);
      const Vec<C> mag = g < 0 ? -g : g;
      big = mag > big ? mag : big;
      const Vec<C> dx = g * u[i] * load(kmat + i * pad + j) * load(v + j);
      store(dg + j, load(dg + j) + dx);
      rs += dx;
    });
    df[i] = hsum<C>(rs);
  }
  C m = 0;
  for (int l = 0; l < kLanes<C>; ++l) m = std::max(m, big[l]);
  return m;
}

// d scores: ds_ij = k K_ij (G_ij u_i v_j - (X Y^T)_ij), xs = X row-major (n, steps), ys = Y
// (steps, pad). One block of columns at a time, so that Y's block (steps x kBlock) stays in L1
// while all rows pass; two rows share each load of it, and their eight accumulators hide the
// FMA latency.
template <typename C, typename T>
DA_SIMD_CLONES void finish(const C* kmat, const C* u, const C* v, const T* gp, const C* xs,
                           const C* ys, T* ds, int64_t n, int64_t pad, int64_t steps, double k) {
  constexpr int64_t W = kLanes<C>;
  for (int64_t j = 0; j < n; j += kBlock<C>) {
    for (int64_t i = 0; i < n; i += 2) {
      const int64_t rows = std::min<int64_t>(2, n - i);
      const C *x0 = xs + i * steps, *x1 = xs + (i + rows - 1) * steps;
      Vec<C> acc[2][4]{};
      for (int64_t m = 0; m < steps; ++m) {
        const Vec<C> p = splat(x0[m]), q = splat(x1[m]);
        const C* y = ys + m * pad + j;
        for (int c = 0; c < 4; ++c) {
          const Vec<C> yc = load(y + c * W);
          acc[0][c] += p * yc, acc[1][c] += q * yc;
        }
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < 4 && j + c * W < n; ++c) {
          const int64_t col = j + c * W, o = (i + r) * n + col;
          const int64_t count = std::min<int64_t>(W, n - col);
          const Vec<C> e = load(v + col) * u[i + r] * load_as<C>(gp + o, count) - acc[r][c];
          store_as<C>(ds + o, load(kmat + (i + r) * pad + col) * e * C(k), count);
        }
    }
  }
}

// p = diag(u) K diag(v).
template <typename C, typename T>
DA_SIMD_CLONES void write_plan(const C* kmat, const C* u, const C* v, T* p, int64_t n,
                               int64_t pad) {
  for (int64_t i = 0; i < n; ++i)
    for_chunks<C>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      store_as<C>(p + i * n + j, load(kmat + i * pad + j) * load(v + j) * u[i], c);
    });
}

// The scratch of compute type C sized for an n x n problem (steps rank-one terms); returns the
// padded row length.
template <typename C>
int64_t prepare(ScalingBuffers<C>& sc, int64_t n, int64_t steps) {
  const int64_t pad = (n + kBlock<C> - 1) / kBlock<C> * kBlock<C>;
  sc.kmat.resize(n * pad);
  sc.xs.resize(n * steps);
  sc.ys.resize(steps * pad);
  for (auto* vec : {&sc.u, &sc.v, &sc.x, &sc.acc, &sc.dg}) vec->assign(pad, C(0));
  return pad;
}

template <typename C>
ScalingBuffers<C>& buffers(ScalingScratch& sc) {
  if constexpr (std::is_same_v<C, float>)
    return sc.f32;
  else
    return sc.f64;
}

template <typename C, typename T>
bool forward_in(const T* s, T* p, T* row_pot, T* col_pot, int64_t n, int64_t n_iters, double k,
                double hi, ScalingScratch& scratch) {
  ScalingBuffers<C>& sc = buffers<C>(scratch);
  const int64_t pad = prepare(sc, n, 0);
  C *kmat = sc.kmat.data(), *u = sc.u.data(), *v = sc.v.data(), *colsum = sc.acc.data();
  kernel_matrix(s, kmat, n, pad, k, hi);
  std::fill(u, u + n, C(1));
  transposed_product(kmat, u, colsum, n, pad);
  for (int64_t t = 0; t < n_iters; ++t) {
    for (int64_t j = 0; j < n; ++j) v[j] = C(1) / colsum[j];
    forward_pass(kmat, v, u, colsum, n, pad);
    if (!log_potential(v, -hi, col_pot + t * n, n) || !log_potential(u, 0.0, row_pot + t * n, n))
      return false;
  }
  write_plan(kmat, u, v, p, n, pad);
  return true;
}

template <typename C, typename T>
bool backward_in(const T* s, const T* gp, const T* row_pot, const T* col_pot, T* ds, int64_t n,
                 int64_t n_iters, double k, double hi, ScalingScratch& scratch) {
  const double bound = Range<C>::kPotential;
  for (int64_t e = 0; e < n_iters * n; ++e)
    if (!(std::abs(double(row_pot[e])) <= bound && std::abs(col_pot[e] + hi) <= bound))
      return false;
  ScalingBuffers<C>& sc = buffers<C>(scratch);
  const int64_t steps = 2 * n_iters, pad = prepare(sc, n, steps);
  C *kmat = sc.kmat.data(), *u = sc.u.data(), *v = sc.v.data(), *x = sc.x.data(),
    *acc = sc.acc.data(), *dg = sc.dg.data();
  kernel_matrix(s, kmat, n, pad, k, hi);
  // Rank-one term m: column m of X (stored row-major as xs[i, m]) and row m of Y.
  auto record = [&](int64_t m, const C* xm, const C* ym) {
    for (int64_t i = 0; i < n; ++i) sc.xs[i * steps + m] = xm[i];
    std::copy(ym, ym + pad, sc.ys.data() + m * pad);
  };
  const int64_t last = n_iters - 1;
  exp_potential(row_pot + last * n, 0.0, u, n, pad);
  exp_potential(col_pot + last * n, hi, v, n, pad);
  const C big = start(gp, kmat, u, v, acc, dg, n, pad);  // acc holds df here
  if constexpr (std::is_same_v<C, float>)
    if (!(big <= Range<C>::kMaxGrad)) return false;
  for (int64_t i = 0; i < n; ++i) x[i] = acc[i] * u[i];  // row step `last`: x = df * U
  transposed_product(kmat, x, acc, n, pad);
  record(2 * last + 1, x, v);
  for (int64_t j = 0; j < n; ++j) dg[j] -= v[j] * acc[j];
  for (int64_t t = last; t >= 0; --t) {
    // Column step t: x = U^{t-1}, y = V^t * dg, with V^t in v.
    if (t > 0)
      exp_potential(row_pot + (t - 1) * n, 0.0, u, n, pad);
    else
      std::fill(u, u + n, C(1));
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

// Whether compute type C takes scores spanning [lo, hi].
template <typename C, typename T>
bool takes(double hi, double lo) {
  return (std::is_same_v<C, T> || std::is_same_v<C, double>) && hi - lo <= Range<C>::kSpread;
}

}  // namespace

template <typename T>
bool scaling_forward(const T* s, T* p, T* row_pot, T* col_pot, int64_t n, int64_t n_iters,
                     double k, ScalingScratch& sc) {
  double hi, lo;
  if (n_iters == 0 || n > kScalingMaxN || !scores_extremes(s, n, k, &hi, &lo)) return false;
  // float32 compute when it can, else (or when a potential leaves its range) float64.
  return (takes<float, T>(hi, lo) &&
          forward_in<float>(s, p, row_pot, col_pot, n, n_iters, k, hi, sc)) ||
         (takes<double, T>(hi, lo) &&
          forward_in<double>(s, p, row_pot, col_pot, n, n_iters, k, hi, sc));
}

template <typename T>
bool scaling_backward(const T* s, const T* gp, const T* row_pot, const T* col_pot, T* ds,
                      int64_t n, int64_t n_iters, double k, ScalingScratch& sc) {
  double hi, lo;
  if (n_iters == 0 || n > kScalingMaxN || !scores_extremes(s, n, k, &hi, &lo)) return false;
  return (takes<float, T>(hi, lo) &&
          backward_in<float>(s, gp, row_pot, col_pot, ds, n, n_iters, k, hi, sc)) ||
         (takes<double, T>(hi, lo) &&
          backward_in<double>(s, gp, row_pot, col_pot, ds, n, n_iters, k, hi, sc));
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
