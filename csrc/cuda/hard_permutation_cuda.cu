// CUDA kernel of deepalign::hard_permutation: the one-hot permutation maximising <scores, P>,
// from the batched CUDA assignment solver (cuda/linear_assignment_cuda.cu) and a scatter.
#include <torch/csrc/stable/library.h>

#include "checks.h"
#include "cuda/assignment_cuda.h"
#include "cuda/stable_cuda.cuh"
#include "stable_ops.h"

namespace deepalign::cuda {
namespace {

Tensor hard_permutation_cuda(const Tensor& scores) {
  DA_CHECK_DIM(scores, 3, "scores", "(B, n, n)");
  DA_CHECK_SQUARE(scores, "scores");
  const DeviceGuard guard(scores.get_device_index());
  const Tensor cols = linear_assignment_cuda_named(scores, /*maximize=*/true, "scores");
  namespace st = torch::stable;
  const Tensor index = st::unsqueeze(cols, -1);
  const Tensor ones = st::full(index.sizes(), 1.0, scores.scalar_type(), std::nullopt, scores.device());
  return aten::scatter(st::new_zeros(scores, scores.sizes()), 2, index, ones);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("hard_permutation", TORCH_BOX(&hard_permutation_cuda));
}

}  // namespace deepalign::cuda
