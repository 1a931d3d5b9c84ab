// Sinkhorn in the scaling domain: the fast path of deepalign::sinkhorn_project and of its
// unrolled backward on CPU (sinkhorn_scaling.cpp has the math). Both take one matrix and return
// false, having written nothing the caller keeps, when it is outside the range where the scaling
// domain is exact to rounding; the caller then runs the log-domain kernel on it.
#pragma once
#include <cstdint>
#include <vector>

namespace deepalign::cpu {

// Largest matrix side the scaling path takes: it keeps K and K^T (2 n^2 values, 1 MiB in float64
// at n = 256) in a core's L2 cache; wider, the matrix-vector products become memory-bound and the
// log domain, which reads the scores in the working precision, is faster. (At n = 256 with
// float64 compute the backward is already at par with the log domain; the forward still 1.6x.)
constexpr int64_t kScalingMaxN = 256;

// Per-thread scratch, reused across the matrices a thread handles: one set of buffers per
// compute type (sinkhorn_scaling.cpp picks float32 or float64 per matrix).
template <typename C>
struct ScalingBuffers {
  std::vector<C> kmat, kt, xs, ys, u, v, x, acc, dg;
};
struct ScalingScratch {
  ScalingBuffers<float> f32;
  ScalingBuffers<double> f64;
};

// P and the potentials (cpu/sinkhorn_cpu.h) of matrix s (n x n, row-major), k = 1 / tau.
template <typename T>
bool scaling_forward(const T* s, T* p, T* row_pot, T* col_pot, int64_t n, int64_t n_iters,
                     double k, ScalingScratch& scratch);

// ds = d scores of matrix s given gp = dLoss/dP and the forward's potentials.
template <typename T>
bool scaling_backward(const T* s, const T* gp, const T* row_pot, const T* col_pot, T* ds,
                      int64_t n, int64_t n_iters, double k, ScalingScratch& scratch);

}  // namespace deepalign::cpu
