// Warp reductions and base-2 math shared by the CUDA kernels. Every reduction runs in a fixed
// order (butterfly shuffles, then warps or cluster ranks in index order): results are bitwise
// reproducible and no float atomics are used anywhere.
#pragma once
#include <cuda_runtime.h>


namespace deepalign {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// 2^x. float uses the MUFU ex2 unit directly (rel. error ~2^-22, 2^-inf = +0); double the
// full-precision libdevice routine.
__device__ __forceinline__ float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double exp2_fast(double x) { return ::exp2(x); }

__device__ __forceinline__ float log2_acc(float x) { return ::log2f(x); }
__device__ __forceinline__ double log2_acc(double x) { return ::log2(x); }

// A log-sum-exp taken as log2(sum) after shifting by the previous potential is exact while the
// sum stays far above the denormal range; below this bound the caller redoes it with a max pass.
template <typename T>
__host__ __device__ constexpr T underflow_bound();
template <>
__host__ __device__ constexpr float underflow_bound<float>() { return 8.673617379884035e-19f; }  // 2^-60
template <>
__host__ __device__ constexpr double underflow_bound<double>() { return 2.409919865102884e-181; }  // 2^-600

template <typename T>
__host__ __device__ constexpr T neg_inf() { return static_cast<T>(-__builtin_huge_val()); }

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace cuda
}  // namespace deepalign
