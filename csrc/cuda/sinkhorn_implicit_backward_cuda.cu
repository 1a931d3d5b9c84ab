// CUDA kernel of deepalign::_sinkhorn_implicit_backward. The implicit-function gradient is a
// dense batched float64 solve composed of ATen ops (cuBLAS / cuSOLVER on the GPU), so the CUDA
// registration reuses the device-agnostic composition of csrc/cpu/sinkhorn_implicit_backward_cpu.cpp
// rather than duplicating it.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace deepalign::cpu {
at::Tensor sinkhorn_implicit_backward_cpu(const at::Tensor& grad_p, const at::Tensor& p,
                                          double tau);
}  // namespace deepalign::cpu

namespace deepalign::cuda {
namespace {

at::Tensor sinkhorn_implicit_backward_cuda(const at::Tensor& grad_p, const at::Tensor& p,
                                           double tau) {
  TORCH_CHECK(grad_p.device() == p.device(), "grad_p and p must be on the same device, got ",
              grad_p.device(), " and ", p.device());
  const c10::cuda::CUDAGuard guard(p.device());
  return cpu::sinkhorn_implicit_backward_cpu(grad_p, p, tau);
}

}  // namespace

TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("_sinkhorn_implicit_backward", &sinkhorn_implicit_backward_cuda);
}

}  // namespace deepalign::cuda
