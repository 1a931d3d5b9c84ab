// The CPU Sinkhorn forward and unrolled backward, shared by sinkhorn_project and
// outer_sinkhorn_project (which projects f0 @ f1^T with the same kernels).
//
// Potentials form (kernels.md §5a). With L = scores / tau kept read-only, the iterate of the
// reference loop is log P = L + f 1^T + 1 g^T, starting from f = g = 0. Iteration t does
//   column step:  g_j <- -logsumexp_i(L_ij + f_i)        (columns of P sum to 1)
//   row step:     f_i <- -logsumexp_j(L_ij + g_j)        (rows of P sum to 1)
// and the result is P = exp(L + f 1^T + 1 g^T) with the potentials of the last iteration.
//
// The potentials returned next to P (what the backward replays; the CUDA kernels produce the same):
//   col_pot[b, t, j] = g_j right after the column step of iteration t,
//   row_pot[b, t, i] = f_i right after the row step of iteration t,
// both of shape (B, n_iters, n), in the dtype of the scores. They are exact log-sum-exp values
// (not shifted), so P = exp(L + row_pot[:, -1, :, None] + col_pot[:, -1, None, :]).
#pragma once
#include <torch/csrc/stable/ops.h>


#include <algorithm>
#include <tuple>
#include <utility>

#include "checks.h"

namespace deepalign::cpu {

std::tuple<Tensor, Tensor, Tensor> sinkhorn_project_cpu(const Tensor& scores, int64_t n_iters,
                                                        double tau);

// The same, with `requirement` opening the error raised for non-finite scores / tau (the outer
// op states it in terms of its own arguments).
std::tuple<Tensor, Tensor, Tensor> sinkhorn_project_cpu_checked(
    const Tensor& scores, int64_t n_iters, double tau, const char* requirement);

Tensor sinkhorn_project_backward_cpu(const Tensor& grad_p, const Tensor& scores,
                                     const Tensor& row_pot, const Tensor& col_pot, int64_t n_iters,
                                     double tau);

// f0 and f1 of outer_sinkhorn_project: (B, n, d), same shape and dtype (checks shared with the
// backward).
void check_outer_features(const Tensor& f0, const Tensor& f1);

// Row blocks per matrix: 1 (one task per matrix) when the batch alone keeps every thread busy,
// otherwise enough blocks of >= 64 rows to spread a small batch over the threads.
int64_t sinkhorn_row_blocks(int64_t batch, int64_t n);

// Rows [first, last) of block blk when n rows are cut into `blocks` near-equal blocks.
inline std::pair<int64_t, int64_t> block_rows(int64_t n, int64_t blocks, int64_t blk) {
  const int64_t step = (n + blocks - 1) / blocks;
  return {std::min(n, blk * step), std::min(n, (blk + 1) * step)};
}

// Runs fn(b, blk) for every (matrix, row block) pair, in parallel.
template <typename Fn>
void for_blocks(int64_t batch, int64_t blocks, const Fn& fn) {
  torch::stable::parallel_for(0, batch * blocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) fn(w / blocks, w % blocks);
  });
}

}  // namespace deepalign::cpu
