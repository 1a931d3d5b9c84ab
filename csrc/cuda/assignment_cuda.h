// The CUDA linear-assignment solver, shared by linear_assignment and hard_permutation.
#pragma once
#include "checks.h"

namespace deepalign::cuda {

// cost (B, n, m), n <= m, on a CUDA device -> int64 (B, n) on that device: the column of each row
// in an optimal assignment. argument_name names `cost` in error messages.
Tensor linear_assignment_cuda_named(const Tensor& cost, bool maximize,
                                        const char* argument_name);

}  // namespace deepalign::cuda
