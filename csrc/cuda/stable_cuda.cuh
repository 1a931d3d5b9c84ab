// The CUDA side of the stable ABI: device guard, current stream and error checks, in place of
// c10::cuda's CUDAGuard, getCurrentCUDAStream and C10_CUDA_CHECK (not part of the stable ABI).
// Kernels themselves are plain CUDA and need nothing from torch.
#pragma once
#include <cuda_runtime.h>

#ifndef USE_CUDA
#define USE_CUDA  // declares the CUDA entries of the C shim (aoti_torch_get_current_cuda_stream)
#endif
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>

#include "checks.h"

// STD_CUDA_CHECK reports the CUDA error with c10's message, as C10_CUDA_CHECK did.
#define DA_CUDA_CHECK(expr) STD_CUDA_CHECK(expr)
#define DA_CUDA_KERNEL_LAUNCH_CHECK() STD_CUDA_KERNEL_LAUNCH_CHECK()

namespace deepalign::cuda {

// Makes t's device current for the scope (c10::cuda::CUDAGuard).
using DeviceGuard = torch::stable::accelerator::DeviceGuard;

// torch's current stream on the current device. (accelerator.h's Stream::nativeHandle needs
// torch >= 2.13; the C shim's entry is older.)
inline cudaStream_t current_stream() {
  int device = 0;
  DA_CUDA_CHECK(cudaGetDevice(&device));
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device, &stream));
  return static_cast<cudaStream_t>(stream);
}

}  // namespace deepalign::cuda
