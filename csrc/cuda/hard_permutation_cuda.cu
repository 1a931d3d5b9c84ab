// CUDA kernel of deepalign::hard_permutation: the one-hot permutation maximising <scores, P>,
// from the batched CUDA assignment solver (cuda/linear_assignment_cuda.cu) and a scatter.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/assignment_cuda.h"

namespace deepalign::cuda {
namespace {

at::Tensor hard_permutation_cuda(const at::Tensor& scores) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor cols = linear_assignment_cuda_named(scores, /*maximize=*/true, "scores");
  return at::zeros_like(scores, at::MemoryFormat::Contiguous).scatter_(2, cols.unsqueeze(-1), 1);
}

}  // namespace

TORCH_LIBRARY_IMPL(deepalign, CUDA, m) { m.impl("hard_permutation", &hard_permutation_cuda); }

}  // namespace deepalign::cuda
