// Fused exact (unrolled) Sinkhorn backward: replays the saved potentials in reverse, with the
// score tile L and the adjoint D resident on chip. For iteration t (log P_t = L + f_t + g_t):
//   row step adjoint:    D <- D - P_t (.) rowsum(D),          P_t  = exp(L + f_t + g_t)
//   column step adjoint: D <- D - Q_t (.) colsum(D),          Q_t  = exp(L + f_{t-1} + g_t)
// starting from D = grad_P (.) P_T and ending with d scores = D / tau (f_0 = 0). Q_{t+1} and P_t
// share f_t, so one pass per row does both. No n^2 state is stored per iteration.
#pragma once

#include "cuda/sinkhorn_global.cuh"
#include "cuda/sinkhorn_tile.cuh"
#include "cuda/stable_cuda.cuh"
#include "stable_ops.h"

namespace deepalign {
namespace cuda {

// Columns per lane (five register arrays of them): on chip up to n = 384 in float32 and n = 192
// in float64 (which keeps 128 registers per thread without spilling).
template <typename T>
constexpr int kBwdMaxWarpCols = sizeof(T) == 4 ? 12 : 6;

template <typename T>
size_t backward_smem_bytes(int rows, int npad, bool outer) {
  const size_t rows4 = round_up(rows, 4);
  size_t dsize = rows4 * npad;  // also the GEMM staging before D exists
  if (outer) dsize = std::max(dsize, static_cast<size_t>(kGemmChunk) * (rows4 + npad));
  const size_t warps = kTileThreads / 32;
  return sizeof(T) * (rows4 * npad + dsize + rows4 + npad + warps * npad + 2 * npad);
}

template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    sinkhorn_tile_backward(TileArgs<T> a, const T* grad_p, const T* row_pot, const T* col_pot,
                           T* grad_scores) {
  const Cluster cl;
  const int rank = cl.rank();
  const int64_t b = blockIdx.x / cl.size();
  const int n = a.n, npad = a.npad, rows4 = round_up(a.rows, 4), iters = a.n_iters;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const TileRows tr(rank, a.rows, n);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Lt = reinterpret_cast<T*>(smem_raw);
  T* Dt = Lt + rows4 * npad;
  const int dsize = max(rows4 * npad, a.scores == nullptr ? kGemmChunk * (rows4 + npad) : 0);
  T* fbuf = Dt + dsize;      // f_t of this CTA's rows, base 2
  T* cs = fbuf + rows4;      // column sums of the pending column adjoint
  T* part = cs + npad;       // per-warp column partials
  T* ex = part + warps * npad;  // two exchange buffers, alternating by iteration
  const T* pot_f = row_pot + b * iters * n;
  const T* pot_g = col_pot + b * iters * n;

  load_tile(Lt, Dt, a, b, tr);
  {  // D = grad_P (.) P_T
    const T* gp = grad_p + (b * n + tr.row0) * static_cast<int64_t>(n);
    const T* fT = iters > 0 ? pot_f + (iters - 1) * n + tr.row0 : nullptr;
    const T* gT = iters > 0 ? pot_g + (iters - 1) * n : nullptr;
    for (int idx = threadIdx.x; idx < tr.count * n; idx += blockDim.x) {
      const int i = idx / n, j = idx - i * n;
      Dt[i * npad + j] = gp[idx] * exp2_fast(Lt[i * npad + j] + pot2(fT, i) + pot2(gT, j));
    }
    if (iters > 0)
      for (int i = threadIdx.x; i < tr.count; i += blockDim.x) fbuf[i] = pot2(fT, i);
  }
  __syncthreads();
  for (int t = iters; t >= 1; --t) {
    const bool pending = t < iters;
    T g_cur[kBwdMaxWarpCols<T>], g_next[kBwdMaxWarpCols<T>], csr[kBwdMaxWarpCols<T>];
    T dreg[kBwdMaxWarpCols<T>], colacc[kBwdMaxWarpCols<T>];
#pragma unroll
    for (int k = 0; k < kBwdMaxWarpCols<T>; ++k) {
      const int j = lane + 32 * k;
      if (j >= n) break;
      g_cur[k] = pot2(pot_g + (t - 1) * n, j);
      g_next[k] = pending ? pot2(pot_g + t * n, j) : T(0);
      csr[k] = pending ? cs[j] : T(0);
      colacc[k] = 0;
    }
    for (int i = warp; i < tr.count; i += warps) {
      const T* Li = Lt + i * npad;
      T* Di = Dt + i * npad;
      const T fi = fbuf[i];
      T acc = 0;
#pragma unroll
      for (int k = 0; k < kBwdMaxWarpCols<T>; ++k) {
        const int j = lane + 32 * k;
        if (j >= n) break;
        T d = Di[j];
        if (pending) d -= exp2_fast(Li[j] + fi + g_next[k]) * csr[k];
        dreg[k] = d;
        acc += d;
      }
      const T rs = warp_sum(acc);
#pragma unroll
      for (int k = 0; k < kBwdMaxWarpCols<T>; ++k) {
        const int j = lane + 32 * k;
        if (j >= n) break;
        const T d = dreg[k] - exp2_fast(Li[j] + fi + g_cur[k]) * rs;
        Di[j] = d;
        colacc[k] += d;
      }
    }
#pragma unroll
    for (int k = 0; k < kBwdMaxWarpCols<T>; ++k) {
      const int j = lane + 32 * k;
      if (j >= n) break;
      part[warp * npad + j] = colacc[k];
    }
    __syncthreads();
    T* ex_t = ex + (t & 1) * npad;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      T s = 0;
      for (int w = 0; w < warps; ++w) s += part[w * npad + j];
      ex_t[j] = s;
    }
    // f_{t-1} for the next pass (f_0 = 0), loaded while the cluster gathers.
    for (int i = threadIdx.x; i < tr.count; i += blockDim.x)
      fbuf[i] = t > 1 ? pot2(pot_f + (t - 2) * n + tr.row0, i) : T(0);
    cl.sync();
    for (int j = threadIdx.x; j < n; j += blockDim.x)
      cs[j] = cluster_combine(cl, ex_t, j, T(0), [](T p, T q) { return p + q; });
    __syncthreads();
  }
  // The first column step's adjoint (f_0 = 0), then d scores = dL / tau.
  const T inv_tau = static_cast<T>(a.scale * kLn2);
  T* out = grad_scores + (b * n + tr.row0) * static_cast<int64_t>(n);
  for (int idx = threadIdx.x; idx < tr.count * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    T d = Dt[i * npad + j];
    if (iters > 0) d -= exp2_fast(Lt[i * npad + j] + pot2(pot_g, j)) * cs[j];
    out[idx] = d * inv_tau;
  }
  cl.sync();  // no CTA leaves while a peer may still read its shared memory
}

// grad_scores (B, n, n) from grad_p and the forward's potentials, for scores (B, n, n) or for
// scores = f0 @ f1^T when `scores` is undefined. All tensors contiguous, of dtype T.
template <typename T>
void sinkhorn_backward_cuda(const Tensor& grad_p, const Tensor& scores,
                            const Tensor& f0, const Tensor& f1, const Tensor& row_pot,
                            const Tensor& col_pot, int64_t n_iters, double tau,
                            Tensor& grad_scores) {
  const bool outer = !scores.defined();
  const int64_t B = grad_scores.size(0);
  const int n = static_cast<int>(grad_scores.size(1));
  const cudaStream_t stream = current_stream();
  TileArgs<T> a{outer ? nullptr : scores.const_data_ptr<T>(),
                outer ? f0.const_data_ptr<T>() : nullptr,
                outer ? f1.const_data_ptr<T>() : nullptr,
                outer ? static_cast<int>(f0.size(2)) : 0,
                n, round_up(n, 32), 0, static_cast<int>(n_iters),
                static_cast<T>(kLog2e / tau), VerdictSlots{}};  // the forward checked the scores
  const TilePlan plan = plan_tile(sinkhorn_tile_backward<T>, outer, B, n, 32 * kBwdMaxWarpCols<T>,
                                  [&](int rows) { return backward_smem_bytes<T>(rows, a.npad, outer); });
  if (plan.cluster > 0) {
    a.rows = plan.rows;
    launch_tile(sinkhorn_tile_backward<T>, plan, B, stream, a, grad_p.const_data_ptr<T>(),
                row_pot.const_data_ptr<T>(), col_pot.const_data_ptr<T>(), grad_scores.mutable_data_ptr<T>());
    return;
  }
  const Tensor s = outer ? aten::bmm(f0, torch::stable::transpose(f1, 1, 2)) : scores;
  sinkhorn_global_backward<T>(grad_p, s, row_pot, col_pot, n_iters, tau, grad_scores, stream);
}

// d<grad_p, P>/d scores, where P came from (scores) or (f0, f1); float16/bfloat16 in float32.
// Returns the gradient with respect to the (implicit) scores, in the compute dtype.
inline Tensor sinkhorn_backward_op(const Tensor& grad_p, const Tensor& scores,
                                       const Tensor& f0, const Tensor& f1,
                                       const Tensor& row_pot, const Tensor& col_pot,
                                       int64_t n_iters, double tau) {
  const Tensor& ref = scores.defined() ? scores : f0;
  const int64_t B = ref.size(0), n = ref.size(1);
  DA_CHECK(grad_p.dim() == 3 && grad_p.size(0) == B && grad_p.size(1) == n && grad_p.size(2) == n,
           "grad_p must be (B, n, n) = (", B, ", ", n, ", ", n, "), got ", shape(grad_p));
  for (const Tensor* pot : {&row_pot, &col_pot})
    DA_CHECK(pot->dim() == 3 && pot->size(0) == B && pot->size(1) == n_iters && pot->size(2) == n,
             "row_pot and col_pot must be (B, n_iters, n) = (", B, ", ", n_iters, ", ", n,
             "), got ", shape(*pot));
  const ScalarType compute =
      ref.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  auto prep = [&](const Tensor& t) {
    return t.defined() ? torch::stable::contiguous(torch::stable::to(t, compute)) : t;
  };
  const Tensor g = prep(grad_p), s = prep(scores), a = prep(f0), b = prep(f1);
  const Tensor rp = prep(row_pot), cp = prep(col_pot);
  Tensor grad_scores = torch::stable::new_empty(ref, {B, n, n}, compute);
  if (B == 0 || n == 0) return grad_scores;
  if (compute == ScalarType::Double)
    sinkhorn_backward_cuda<double>(g, s, a, b, rp, cp, n_iters, tau, grad_scores);
  else
    sinkhorn_backward_cuda<float>(g, s, a, b, rp, cp, n_iters, tau, grad_scores);
  return grad_scores;
}

}  // namespace cuda
}  // namespace deepalign
