// Portable SIMD helpers for the CPU kernels: 32-byte GCC vector types, a polynomial exp, and
// runtime dispatch by function multiversioning.
//
// Why not at::vec::Vectorized: an extension is compiled without per-file CPU_CAPABILITY flags,
// so Vectorized falls back to its scalar base. GCC vector extensions plus `target_clones` give one
// source that the compiler lowers to AVX-512, AVX2 or SSE, picked at load time by the CPU.
// Why not libm's exp: the Sinkhorn kernels are exp-bound and glibc's expf costs ~2.5x more
// (kernels.md §1, §5b).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__GNUC__)
// 32-byte vectors passed by value would change the calling convention without AVX; every
// function taking them here is force-inlined, so there is no such call to warn about.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// Hot loops are compiled three times (AVX-512, AVX2+FMA, baseline); the loader picks one.
#define DA_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DA_SIMD_CLONES
#endif
#define DA_INLINE inline __attribute__((always_inline))
// For lambdas passed to for_chunks: inlined into the (cloned) caller, so they get its ISA.
#define DA_LAMBDA_INLINE __attribute__((always_inline))

namespace deepalign::cpu {

// One register of AVX2 (and of AVX-512VL, which has 32 of them). A wider generic vector has no
// register in the AVX2 clone: GCC keeps it in memory and moves it through general registers
// piece by piece, on every operation. With 64-byte vectors the kernels ran at a tenth of ATen's
// speed on an AVX2-only AMD EPYC (linear_relu_pool) while beating it on AVX-512 Xeons.
constexpr int kVectorBytes = 32;

template <typename T>
struct Simd;

template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVectorBytes)));
  typedef int32_t I __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / 4;
};

template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVectorBytes)));
  typedef int64_t I __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / 8;
};

template <typename T>
using Vec = typename Simd<T>::V;

// Whether the CPU has AVX-512's 32 vector registers (AVX2 and SSE have 16): register blocking
// can hold twice as many vectors there.
inline bool wide_vector_registers() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  return __builtin_cpu_supports("x86-64-v4");
#else
  return false;
#endif
}

template <typename T>
DA_INLINE Vec<T> splat(T x) {
  return Vec<T>{} + x;
}

template <typename T>
DA_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The first `count` lanes from p, the rest `fill` (so a tail needs no scalar loop).
template <typename T>
DA_INLINE Vec<T> load_partial(const T* p, int64_t count, T fill) {
  if (count == Simd<T>::kLanes) return load(p);  // the common case: one vector load
  Vec<T> v = splat<T>(fill);
  std::memcpy(&v, p, sizeof(T) * count);
  return v;
}

// p[0, count) as a vector of W (T is W, or narrower and widened, e.g. float to double), `fill`
// in the lanes past count.
template <typename W, typename T>
DA_INLINE Vec<W> load_convert(const T* p, int64_t count, T fill) {
  if constexpr (std::is_same_v<T, W>) {
    return load_partial(p, count, fill);
  } else {
    typedef T Narrow __attribute__((vector_size(sizeof(T) * Simd<W>::kLanes)));
    Narrow v = Narrow{} + fill;
    if (count == Simd<W>::kLanes)  // a fixed-size copy is one vector load, a variable one a call
      std::memcpy(&v, p, sizeof(v));
    else
      std::memcpy(&v, p, sizeof(T) * count);
    return __builtin_convertvector(v, Vec<W>);
  }
}

template <typename T>
DA_INLINE void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
DA_INLINE void store_partial(T* p, Vec<T> v, int64_t count) {
  if (count == Simd<T>::kLanes) return store(p, v);
  std::memcpy(p, &v, sizeof(T) * count);
}

// Calls body(j, count) for the chunks of [0, n): full vectors, where count is the compile-time
// lane count (so load_partial / store_partial become plain vector moves), then one tail.
template <typename T, typename Body>
DA_INLINE void for_chunks(int64_t n, Body&& body) {
  constexpr int64_t W = Simd<T>::kLanes;
  int64_t j = 0;
  for (; j + W <= n; j += W) body(j, std::integral_constant<int64_t, W>{});
  if (j < n) body(j, n - j);
}

// Sum of the lanes, pairwise (log2(lanes) shuffle-adds: a short dependency chain at the end of
// every row).
template <typename T>
DA_INLINE T hsum(Vec<T> v) {
  using I = typename Simd<T>::I;
  for (int half = Simd<T>::kLanes / 2; half > 0; half /= 2) {
    I rotate;
    for (int l = 0; l < Simd<T>::kLanes; ++l) rotate[l] = (l + half) % Simd<T>::kLanes;
    v += __builtin_shuffle(v, rotate);
  }
  return v[0];
}

// exp(r) on the reduced range |r| <= ln2/2: Taylor to degree 13 (truncation error < 1e-17).
DA_INLINE Vec<double> exp_reduced(Vec<double> r) {
  Vec<double> p = splat(1.0 / 6227020800.0);
  const double inv_fact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                             1.0 / 362880.0,    1.0 / 40320.0,    1.0 / 5040.0,
                             1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,
                             1.0 / 6.0,         0.5,              1.0,
                             1.0};
  for (double c : inv_fact) p = p * r + c;
  return p;
}

// 2^r on |r| <= 1/2. Float: a degree-6 polynomial fitted for least relative error (max 1e-7,
// ~1.6 ulp, with Horner in float). Double: exp(r ln2) by the Taylor series above.
DA_INLINE Vec<float> exp2_reduced(Vec<float> r) {
  Vec<float> p = splat(1.5345817e-4f);
  p = p * r + 1.3399931e-3f;
  p = p * r + 9.6184891e-3f;
  p = p * r + 5.5503286e-2f;
  p = p * r + 2.4022646e-1f;
  p = p * r + 6.9314718e-1f;
  return p * r + 1.0f;
}

DA_INLINE Vec<double> exp2_reduced(Vec<double> r) { return exp_reduced(r * 0.6931471805599453); }

// Vectorised 2^x for x <= max_exponent - 1 (127 float, 1023 double): x = k + r with k an integer
// and |r| <= 1/2, 2^x = 2^k 2^r. Exactly 0 for x <= -(max_exponent - 1) (it would be
// subnormal), and at most subnormal above that; x must not be NaN.
template <typename T>
DA_INLINE Vec<T> vexp2_bounded(Vec<T> x) {
  using I = typename Simd<T>::I;
  constexpr int kMantissa = std::numeric_limits<T>::digits - 1;
  constexpr T kBias = std::numeric_limits<T>::max_exponent - 1;
  // Adding 1.5 * 2^mantissa rounds to an integer (exactly, without -ffast-math); the extra bias
  // leaves k + bias in the low mantissa bits, which shift up into the exponent field of 2^k.
  const T magic = T(1.5) * T(int64_t(1) << kMantissa) + kBias;
  const Vec<T> xc = x < -kBias ? splat<T>(-kBias) : x;  // k = -bias: a zero field, 2^k = 0
  const Vec<T> biased = xc + magic;
  const Vec<T> r = xc - (biased - magic);
  I e;
  std::memcpy(&e, &biased, sizeof(e));
  e <<= kMantissa;
  Vec<T> scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return exp2_reduced(r) * scale;
}

// 2^x on the whole range (overflowing to +inf), for plans that were never normalised
// (n_iters = 0): 2^x = (2^(x / 2))^2. x must not be NaN.
template <typename T>
DA_INLINE Vec<T> vexp2(Vec<T> x) {
  constexpr T kTop = std::numeric_limits<T>::max_exponent - 2;  // (2^kTop)^2 overflows
  Vec<T> h = x * T(0.5);
  h = h > kTop ? splat<T>(kTop) : h;
  const Vec<T> half = vexp2_bounded<T>(h);
  return half * half;
}

// exp(x) = 2^(x log2 e), for x <= 88 (float) / 709 (double), the range of every log-plan entry
// after a normalisation. Relative error ~2 ulp; exactly 0 below about -88 / -709.
template <typename T>
DA_INLINE Vec<T> vexp_bounded(Vec<T> x) {
  return vexp2_bounded<T>(x * T(1.4426950408889634));
}

// exp(x) on the whole range, as vexp2.
template <typename T>
DA_INLINE Vec<T> vexp(Vec<T> x) {
  return vexp2<T>(x * T(1.4426950408889634));
}

// x = 2^e m with m in [sqrt(1/2), sqrt(2)), for positive normal x: the reduction of the logs.
template <typename T>
DA_INLINE void split_exponent(Vec<T> x, Vec<T>& e, Vec<T>& m) {
  using I = typename Simd<T>::I;
  using S = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  constexpr int kMantissa = std::numeric_limits<T>::digits - 1;
  constexpr S kBias = std::numeric_limits<T>::max_exponent - 1;
  I bits;
  std::memcpy(&bits, &x, sizeof(bits));
  e = __builtin_convertvector((bits >> kMantissa) - kBias, Vec<T>);
  bits = (bits & ((S(1) << kMantissa) - 1)) | (kBias << kMantissa);  // m in [1, 2)
  std::memcpy(&m, &bits, sizeof(m));
  const I big = m > T(1.4142135623730951);
  m = big ? m * T(0.5) : m;
  e = big ? e + T(1) : e;
}

// log2(x) for positive normal float x (Cephes' logf polynomial, ~2 ulp): log2 x = e + log(m)
// log2(e).
DA_INLINE Vec<float> vlog2(Vec<float> x) {
  Vec<float> e, m;
  split_exponent<float>(x, e, m);
  const Vec<float> t = m - 1.0f, z = t * t;
  Vec<float> y = splat(7.0376836292e-2f);
  for (float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
                  -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f})
    y = y * t + c;
  const Vec<float> log_m = t + (y * t * z - 0.5f * z);
  return e + log_m * 1.4426950408889634f;
}

// Natural log of positive normal doubles: log x = e log 2 + log m, with log m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| < 0.172, summed to s^21 (error < 1e-18).
DA_INLINE Vec<double> vlog(Vec<double> x) {
  Vec<double> e, m;
  split_exponent<double>(x, e, m);
  const Vec<double> s = (m - 1.0) / (m + 1.0), z = s * s;
  Vec<double> p = splat(1.0 / 21);
  for (int k = 19; k >= 1; k -= 2) p = p * z + 1.0 / k;
  return e * 0.6931471805599453 + 2.0 * s * p;
}

}  // namespace deepalign::cpu
