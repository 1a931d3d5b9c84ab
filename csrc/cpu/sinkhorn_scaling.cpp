// Sinkhorn and its unrolled backward in the scaling domain, one matrix at a time: the fast path
// of the CPU kernels (cpu/sinkhorn_cpu.h gives the log-domain semantics both reproduce).
//
// With L = scores / tau, M = max L and K = exp(L - M), every half-step matrix of the forward is K
// scaled on both sides, and the log-domain potentials are logs of the scalings:
//   column step t:  V^t = 1 / (K^T U^{t-1}),   g^t = log V^t - M     (U^{-1} = 1)
//   row step t:     U^t = 1 / (K V^t),         f^t = log U^t
//   A^t = diag(U^t) K diag(V^t) after row step t, C^t = diag(U^{t-1}) K diag(V^t) after column
//   step t, and P = A^{last}.
// So a half-step is one matrix-vector product instead of one exp per element. K and K^T are both
// kept, so that every product is a sum of scaled rows: a stream of vector FMAs into
// accumulators held in registers, with no horizontal sums.
//
// The backward (the log-domain sweep of sinkhorn_project_backward_cpu.cpp) subtracts
// diag(x) K diag(y) from dL at each adjoint step and needs one reduction there:
//   row step t:     x = df * U^t,   y = V^t,        dg -= y * (K^T x)
//   column step t:  x = U^{t-1},    y = V^t * dg,   df = -(x * (K y))
// The 2 n_iters rank-one terms are summed at the end as one product:
//   d scores = (G * P - K * (X Y^T)) / tau.
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
// e^300, far from its e^709 even for products of two factors. float32 (e^88): spread <= 60 and
// potentials <= 40 keep U_i V_j <= e^60 and U, V <= e^40; with |G| <= kMaxGrad (so |df|, |dg|
// <= n 1e6 < e^19) every product of the backward stays below e^80.
template <typename C>
struct Range;
template <>
struct Range<double> {
  static constexpr double kSpread = 300, kPotential = 300;
};
template <>
struct Range<float> {
  static constexpr double kSpread = 60, kPotential = 40, kMaxGrad = 1e6;
};

template <typename C>
constexpr int64_t kLanes = Simd<C>::kLanes;
// Rows of K and Y are padded with zeros to a multiple of this (the column block of finish).
template <typename C>
constexpr int64_t kBlock = 4 * kLanes<C>;

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
      const VD x = load_convert<double>(s + i * n + j, c, T(0)) * k;
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

// K_ij = exp(k s_ij - hi) and its transpose kt, rows of both padded with zeros to `pad`.
template <typename C, typename T>
DA_SIMD_CLONES void kernel_matrix(const T* s, C* kmat, C* kt, int64_t n, int64_t pad, double k,
                                  double hi) {
  for (int64_t i = 0; i < n; ++i) {
    C* row = kmat + i * pad;
    std::fill(row + n, row + pad, C(0));
    std::fill(kt + i * pad + n, kt + i * pad + pad, C(0));
    for_chunks<C>(n, [&](int64_t j, auto c) DA_LAMBDA_INLINE {
      // The argument in T's precision (exact for double; float keeps the log domain's rounding).
      const Vec<C> x = load_convert<C>(s + i * n + j, c, T(0)) * C(k) - C(hi);
      store_partial(row + j, vexp_bounded<C>(x), c);
    });
    for (int64_t j = 0; j < n; ++j) kt[j * pad + i] = row[j];
  }
}

// out[i] = exp(pot[i] + shift) for i < n, 0 up to pad.
template <typename C, typename T>
DA_SIMD_CLONES void exp_potential(const T* pot, double shift, C* out, int64_t n, int64_t pad) {
  for_chunks<C>(n, [&](int64_t i, auto c) DA_LAMBDA_INLINE {
    store_partial(out + i, vexp_bounded<C>(load_convert<C>(pot + i, c, T(0)) + C(shift)), c);
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

// out = sum_j y_j rows_j over the n padded rows of `rows`: with rows = K^T this is K y, with
// rows = K it is K^T y. Blocks of R vectors of out stay in registers while the rows stream by.
template <int64_t R, typename C>
DA_INLINE void sum_of_rows_block(const C* rows, const C* y, C* out, int64_t n, int64_t pad) {
  constexpr int64_t W = kLanes<C>;
  Vec<C> a[R]{};
  for (int64_t j = 0; j < n; ++j) {
    const Vec<C> yj = splat(y[j]);
    for (int64_t q = 0; q < R; ++q) a[q] += yj * load(rows + j * pad + q * W);
  }
  for (int64_t q = 0; q < R; ++q) store(out + q * W, a[q]);
}

template <typename C>
DA_SIMD_CLONES void sum_of_rows(const C* rows, const C* y, C* out, int64_t n, int64_t pad) {
  constexpr int64_t W = kLanes<C>;
  int64_t i = 0;  // pad is a multiple of 4 W
  for (; i + 8 * W <= pad; i += 8 * W) sum_of_rows_block<8>(rows + i, y, out + i, n, pad);
  if (i < pad) sum_of_rows_block<4>(rows + i, y, out + i, n, pad);
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
      const Vec<C> g = load_convert<C>(gp + i * n + j, c, T(0));
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
          const Vec<C> g = load_convert<C>(gp + o, count, T(0));
          const Vec<C> e = load(v + col) * u[i + r] * g - acc[r][c];
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
  sc.kt.resize(n * pad);
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
  C *kmat = sc.kmat.data(), *kt = sc.kt.data(), *u = sc.u.data(), *v = sc.v.data(),
    *sums = sc.acc.data();
  kernel_matrix(s, kmat, kt, n, pad, k, hi);
  std::fill(u, u + n, C(1));
  for (int64_t t = 0; t < n_iters; ++t) {
    sum_of_rows(kmat, u, sums, n, pad);  // K^T U
    for (int64_t j = 0; j < n; ++j) v[j] = C(1) / sums[j];
    sum_of_rows(kt, v, sums, n, pad);  // K V
    for (int64_t i = 0; i < n; ++i) u[i] = C(1) / sums[i];
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
  C *kmat = sc.kmat.data(), *kt = sc.kt.data(), *u = sc.u.data(), *v = sc.v.data(),
    *x = sc.x.data(), *acc = sc.acc.data(), *dg = sc.dg.data();
  kernel_matrix(s, kmat, kt, n, pad, k, hi);
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
  sum_of_rows(kmat, x, acc, n, pad);                      // K^T x
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
    // df = -U^{t-1} * (K y), and row step t-1's x = df * U^{t-1}.
    sum_of_rows(kt, v, acc, n, pad);
    for (int64_t i = 0; i < n; ++i) x[i] = -u[i] * u[i] * acc[i];
    sum_of_rows(kmat, x, acc, n, pad);  // K^T x
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
