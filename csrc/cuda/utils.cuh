// Warp and block reductions shared by the CUDA kernels, in a fixed order (reproducible, no atomics).
#pragma once
#include <cuda_runtime.h>

namespace deepalign {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

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

}  // namespace cuda
}  // namespace deepalign
