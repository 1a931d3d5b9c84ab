// The CPU linear-assignment solver, shared by linear_assignment and hard_permutation.
#pragma once
#include "checks.h"

namespace deepalign::cpu {

// cost (B, n, m), n <= m -> int64 (B, n): the column of each row in an optimal assignment.
// argument_name names `cost` in error messages (hard_permutation passes "scores").
Tensor linear_assignment_cpu_named(const Tensor& cost, bool maximize, const char* argument_name);

}  // namespace deepalign::cpu
