// CUDA kernel of deepalign::_sinkhorn_implicit_backward. The implicit-function gradient is a
// dense batched float64 solve composed of ATen ops (cuBLAS / cuSOLVER on the GPU), so the CUDA
// registration reuses the device-agnostic composition of csrc/cpu/sinkhorn_implicit_backward_cpu.cpp
// rather than duplicating it.
#include <torch/csrc/stable/library.h>

#include "checks.h"
#include "cuda/stable_cuda.cuh"

namespace deepalign::cpu {
Tensor sinkhorn_implicit_backward_cpu(const Tensor& grad_p, const Tensor& p, double tau);
}  // namespace deepalign::cpu

namespace deepalign::cuda {
namespace {

Tensor sinkhorn_implicit_backward_cuda(const Tensor& grad_p, const Tensor& p, double tau) {
  DA_CHECK_SAME_DEVICE(grad_p, p, "grad_p", "p");
  const DeviceGuard guard(p.get_device_index());
  return cpu::sinkhorn_implicit_backward_cpu(grad_p, p, tau);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("_sinkhorn_implicit_backward", TORCH_BOX(&sinkhorn_implicit_backward_cuda));
}

}  // namespace deepalign::cuda
