// The Sinkhorn forward and unrolled backward for matrices too large to stay on chip (or any n):
// the scores stay in global memory (L2-resident up to n ~ 2500), and every half-step is a
// grid-wide kernel with one block per row, so that a single large matrix still fills the GPU.
// The forward keeps a transposed copy of the scores, so a column step is a row step of L^T (one
// launch per half-step). The backward's column sums of the changing adjoint are row slices
// written to a partial buffer and summed in slice order by a second kernel. Reproducible, no
// atomics; same algorithm and conventions as the resident kernels.
#pragma once

#include "cuda/stable_cuda.cuh"
#include "cuda/utils.cuh"
#include "stable_ops.h"

namespace deepalign {
namespace cuda {

constexpr int kGlobalThreads = 256;

// Block-wide reduction in a fixed order; `shared` holds 32 values. Every thread gets the result.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, T init, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o));
  if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
  __syncthreads();
  T acc = init;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) acc = op(acc, shared[w]);
  __syncthreads();
  return acc;
}

// Natural-unit potential p[idx] in base 2, or 0 where there is none (f_0 = 0).
template <typename T>
__device__ __forceinline__ T pot2(const T* p, int64_t idx) {
  return p == nullptr ? T(0) : static_cast<T>(p[idx] * kLog2e);
}

// partial[b][s][j] = sum of column j of D over the rows of slice s.
template <typename T>
__global__ void global_column_partial(const T* D, int n, T* partial) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, s = blockIdx.y, slices = gridDim.y;
  const int64_t b = blockIdx.z;
  if (j >= n) return;
  const int per = (n + slices - 1) / slices, end = min(n, (s + 1) * per);
  const T* x = D + b * n * static_cast<int64_t>(n) + j;
  T acc = 0;
  for (int i = s * per; i < end; ++i) acc += x[i * static_cast<int64_t>(n)];
  partial[(b * slices + s) * n + j] = acc;
}

// sums[b][j] = the slices of column j, in slice order.
template <typename T>
__global__ void global_column_finish(int n, int slices, const T* partial, T* sums) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t b = blockIdx.z;
  if (j >= n) return;
  T acc = 0;
  for (int s = 0; s < slices; ++s) acc += partial[(b * slices + s) * n + j];
  sums[b * n + j] = acc;
}

// One half-step, one block per row of X: own_i -= log2 sum_j exp2(X_ij * scale + own_i + other_j).
// The row step with X = L (own f, other g), the column step with X = L^T (own g, other f). A sum
// that underflows, or overflows (the first column step starts from g = 0), is redone exactly.
template <typename T>
__global__ void global_half_step(const T* X, T* own, const T* other, T scale, int n, T* pot,
                                 int64_t pot_stride) {
  __shared__ T shared[32];
  const int i = blockIdx.x;
  const int64_t b = blockIdx.y;
  const T* x = X + (b * n + i) * static_cast<int64_t>(n);
  const T* g = other + b * n;
  const T fi = own[b * n + i];
  auto plus = [](T p, T q) { return p + q; };
  T s = 0;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += exp2_fast(x[j] * scale + fi + g[j]);
  s = block_reduce(s, shared, T(0), plus);
  T lse;
  if (s >= underflow_bound<T>() && isfinite(s)) {
    lse = log2_acc(s);
  } else {  // block-uniform
    T m = neg_inf<T>();
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = max(m, x[j] * scale + fi + g[j]);
    m = block_reduce(m, shared, neg_inf<T>(), [](T p, T q) { return max(p, q); });
    T s2 = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s2 += exp2_fast(x[j] * scale + fi + g[j] - m);
    lse = m + log2_acc(block_reduce(s2, shared, T(0), plus));
  }
  if (threadIdx.x == 0) {
    own[b * n + i] = fi - lse;
    pot[b * pot_stride + i] = static_cast<T>((fi - lse) * kLn2);
  }
}

// out = in (.) exp2(L + F_i + G_j) * factor, one block per row; `in` may be null (then 1).
template <typename T>
__global__ void global_scale_by_plan(const T* X, const T* F, int64_t f_stride, const T* G,
                                     int64_t g_stride, bool natural, T scale, int n,
                                     const T* in, T factor, T* out) {
  const int i = blockIdx.x;
  const int64_t b = blockIdx.y, row = (b * n + i) * static_cast<int64_t>(n);
  const T fi = natural ? pot2(F, b * f_stride + i) : F[b * f_stride + i];
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const T gj = natural ? pot2(G, b * g_stride + j) : G[b * g_stride + j];
    const T p = exp2_fast(X[row + j] * scale + fi + gj);
    out[row + j] = (in == nullptr ? p : in[row + j] * p) * factor;
  }
}

// Backward of iteration t's row step, fused with the pending column step of iteration t + 1
// (cs != null): d = D - P'(.) cs; D = d - P (.) rowsum(d), all potentials in natural units.
template <typename T>
__global__ void global_row_backward(const T* X, T* D, const T* F, const T* G, const T* G_next,
                                    const T* cs, int64_t pot_stride, T scale, int n) {
  __shared__ T shared[32];
  const int i = blockIdx.x;
  const int64_t b = blockIdx.y, row = (b * n + i) * static_cast<int64_t>(n);
  const T fi = pot2(F, b * pot_stride + i);
  T acc = 0;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    T d = D[row + j];
    if (cs != nullptr)
      d -= exp2_fast(X[row + j] * scale + fi + pot2(G_next, b * pot_stride + j)) * cs[b * n + j];
    D[row + j] = d;
    acc += d;
  }
  const T rs = block_reduce(acc, shared, T(0), [](T p, T q) { return p + q; });
  for (int j = threadIdx.x; j < n; j += blockDim.x)
    D[row + j] -= exp2_fast(X[row + j] * scale + fi + pot2(G, b * pot_stride + j)) * rs;
}

// Backward of the first column step, then d scores = dL / tau.
template <typename T>
__global__ void global_first_column_backward(const T* X, T* D, const T* G, const T* cs,
                                             int64_t pot_stride, T scale, T inv_tau, int n) {
  const int i = blockIdx.x;
  const int64_t b = blockIdx.y, row = (b * n + i) * static_cast<int64_t>(n);
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    T d = D[row + j];
    if (cs != nullptr) d -= exp2_fast(X[row + j] * scale + pot2(G, b * pot_stride + j)) * cs[b * n + j];
    D[row + j] = d * inv_tau;
  }
}

struct GlobalGrid {
  dim3 col, finish, row;
  int slices;
  GlobalGrid(int64_t B, int n) {
    DA_CHECK(B <= 65535, "sinkhorn: batch of ", B, " matrices of size ", n,
             " exceeds the 65535 supported beyond the on-chip size");
    int sms = 0, device = 0;
    DA_CUDA_CHECK(cudaGetDevice(&device));
    DA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int tiles = ceil_div(n, kGlobalThreads);
    slices = std::max(1, std::min(n, ceil_div(2 * sms, tiles * B)));
    col = dim3(tiles, slices, B);
    finish = dim3(tiles, 1, B);
    row = dim3(n, B);
  }
};

template <typename T>
void sinkhorn_global_forward(const Tensor& scores, int64_t n_iters, double tau, Tensor& P,
                             Tensor& row_pot, Tensor& col_pot, cudaStream_t stream) {
  const int64_t B = P.size(0);
  const int n = static_cast<int>(P.size(1));
  const GlobalGrid grid(B, n);
  const T scale = static_cast<T>(kLog2e / tau);
  Tensor F = torch::stable::new_zeros(P, {B, n}), G = torch::stable::new_zeros(P, {B, n});
  const Tensor transposed = torch::stable::contiguous(torch::stable::transpose(scores, 1, 2));
  const T *x = scores.const_data_ptr<T>(), *xt = transposed.const_data_ptr<T>();
  T *f = F.mutable_data_ptr<T>(), *g = G.mutable_data_ptr<T>();
  const int64_t stride = n_iters * n;
  for (int64_t t = 0; t < n_iters; ++t) {
    global_half_step<T><<<grid.row, kGlobalThreads, 0, stream>>>(
        xt, g, f, scale, n, col_pot.mutable_data_ptr<T>() + t * n, stride);
    DA_CUDA_KERNEL_LAUNCH_CHECK();
    global_half_step<T><<<grid.row, kGlobalThreads, 0, stream>>>(
        x, f, g, scale, n, row_pot.mutable_data_ptr<T>() + t * n, stride);
    DA_CUDA_KERNEL_LAUNCH_CHECK();
  }
  global_scale_by_plan<T><<<grid.row, kGlobalThreads, 0, stream>>>(
      x, f, n, g, n, false, scale, n, nullptr, T(1), P.mutable_data_ptr<T>());
  DA_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad_scores = d<grad_p, P>/d scores by replaying the saved potentials backwards.
template <typename T>
void sinkhorn_global_backward(const Tensor& grad_p, const Tensor& scores,
                              const Tensor& row_pot, const Tensor& col_pot,
                              int64_t n_iters, double tau, Tensor& grad_scores,
                              cudaStream_t stream) {
  const int64_t B = grad_scores.size(0);
  const int n = static_cast<int>(grad_scores.size(1));
  const GlobalGrid grid(B, n);
  const T scale = static_cast<T>(kLog2e / tau);
  const T* x = scores.const_data_ptr<T>();
  T* d = grad_scores.mutable_data_ptr<T>();
  const T* F = row_pot.const_data_ptr<T>();
  const T* G = col_pot.const_data_ptr<T>();
  const int64_t stride = n_iters * n, last = (n_iters - 1) * n;
  Tensor cs_t = torch::stable::new_empty(grad_scores, {B, n});
  Tensor partial = torch::stable::new_empty(grad_scores, {B, grid.slices, n});
  T *cs = cs_t.mutable_data_ptr<T>(), *part = partial.mutable_data_ptr<T>();
  global_scale_by_plan<T><<<grid.row, kGlobalThreads, 0, stream>>>(
      x, n_iters > 0 ? F + last : nullptr, stride, n_iters > 0 ? G + last : nullptr, stride, true,
      scale, n, grad_p.const_data_ptr<T>(), T(1), d);
  DA_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t t = n_iters; t >= 1; --t) {
    const int64_t cur = (t - 1) * n;
    global_row_backward<T><<<grid.row, kGlobalThreads, 0, stream>>>(
        x, d, F + cur, G + cur, t < n_iters ? G + cur + n : nullptr, t < n_iters ? cs : nullptr,
        stride, scale, n);
    DA_CUDA_KERNEL_LAUNCH_CHECK();
    global_column_partial<T><<<grid.col, kGlobalThreads, 0, stream>>>(d, n, part);
    DA_CUDA_KERNEL_LAUNCH_CHECK();
    global_column_finish<T><<<grid.finish, kGlobalThreads, 0, stream>>>(n, grid.slices, part, cs);
    DA_CUDA_KERNEL_LAUNCH_CHECK();
  }
  global_first_column_backward<T><<<grid.row, kGlobalThreads, 0, stream>>>(
      x, d, n_iters > 0 ? G : nullptr, n_iters > 0 ? cs : nullptr, stride,
      scale, static_cast<T>(1.0 / tau), n);
  DA_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace deepalign
