// Portable SIMD helpers for the CPU kernels: 64-byte GCC vector types, a polynomial exp, and
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
// 64-byte vectors passed by value would change the calling convention without AVX-512; every
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

template <typename T>
struct Simd;

template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int kLanes = 16;
  // exp(x) underflows (to a subnormal) below this; we return exactly 0 there instead.
  static constexpr float kExpMin = -87.3f;
  static constexpr float kExpMax = 88.7f;
};

template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  static constexpr int kLanes = 8;
  static constexpr double kExpMin = -708.0;
  static constexpr double kExpMax = 709.0;
};

template <typename T>
using Vec = typename Simd<T>::V;

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

template <typename T>
DA_INLINE T hsum(Vec<T> v) {
  T s = 0;
  for (int k = 0; k < Simd<T>::kLanes; ++k) s += v[k];
  return s;
}

// exp(r) on the reduced range |r| <= ln2/2: minimax polynomial (Cephes) for float, Taylor to
// degree 13 for double (truncation error < 1e-17).
DA_INLINE Vec<float> exp_reduced(Vec<float> r) {
  Vec<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

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

// Vectorised exp for x <= 88 (float) / 709 (double), the range of every log-plan entry after a
// normalisation: x = k ln2 + r, exp(x) = 2^k exp(r). Exactly 0 below kExpMin; x must not be NaN.
// Relative error ~1 ulp (float) / ~2 ulp (double).
template <typename T>
DA_INLINE Vec<T> vexp_bounded(Vec<T> x) {
  using S = Simd<T>;
  using I = typename S::I;
  constexpr int kMantissa = std::numeric_limits<T>::digits - 1;
  constexpr int kBias = std::numeric_limits<T>::max_exponent - 1;
  // Round-to-nearest by the 1.5 * 2^mantissa trick: exact without -ffast-math.
  const T magic = T(1.5) * T(int64_t(1) << kMantissa);
  // ln2 split so that k * kLn2Hi is exact.
  const T kLn2Hi = sizeof(T) == 4 ? T(0.693359375) : T(6.93145751953125e-1);
  const T kLn2Lo = sizeof(T) == 4 ? T(-2.12194440e-4) : T(1.42860682030941723212e-6);
  const Vec<T> xc = x < T(S::kExpMin) ? splat<T>(S::kExpMin) : x;
  const Vec<T> k = (xc * T(1.4426950408889634) + magic) - magic;
  const Vec<T> r = xc - k * kLn2Hi - k * kLn2Lo;
  const I e = (__builtin_convertvector(k, I) + kBias) << kMantissa;
  Vec<T> scale;
  std::memcpy(&scale, &e, sizeof(scale));
  const Vec<T> y = exp_reduced(r) * scale;
  return x < T(S::kExpMin) ? splat<T>(0) : y;
}

// exp on the whole range (overflowing to +inf), for plans that were never normalised
// (n_iters = 0): exp(x) = exp(x / 2)^2. x must not be NaN.
template <typename T>
DA_INLINE Vec<T> vexp(Vec<T> x) {
  Vec<T> h = x * T(0.5);
  h = h > T(Simd<T>::kExpMax) ? splat<T>(Simd<T>::kExpMax) : h;
  const Vec<T> half = vexp_bounded<T>(h);
  return half * half;
}

}  // namespace deepalign::cpu
