// Fused log-domain Sinkhorn forward in the potentials form (see csrc/cpu for the convention):
// log P_t = L + f_t 1^T + 1 g_t^T with L = scores / tau; per iteration the column step
// g <- g - LSE_i(L + f + g), then the row step f <- f - LSE_j(L + f + g). Internally everything is
// in base 2 (L2 = L * log2 e) so every element costs one MUFU ex2; potentials are written out in
// natural units. Each LSE is one pass shifted by the previous potential (every term <= 1); a
// sum that falls towards the denormal range is redone with a max pass.
//
// One pass over the tile per iteration: every warp owns some rows and keeps all of g in
// registers (lane l holds columns l, l + 32, ...). The row step of iteration t also sums, per
// column, the terms exp2(L + f_t + g_t) that the column step of iteration t + 1 needs; those
// per-warp partial sums are added over the warps (after a block barrier) and over the cluster's
// CTAs (after a cluster barrier, one thread per column), in a fixed order, into g, which every
// warp copies into its registers after a last block barrier: three barriers per iteration.
#pragma once

#include "cuda/sinkhorn_global.cuh"
#include "cuda/sinkhorn_tile.cuh"
#include "cuda/stable_cuda.cuh"
#include "stable_ops.h"

namespace deepalign {
namespace cuda {

// Columns per lane (two register arrays of them): on chip up to n = 512 in float32 and n = 384
// in float64 (which keeps 128 registers per thread without spilling).
template <typename T>
constexpr int kFwdMaxWarpCols = sizeof(T) == 4 ? 16 : 12;
constexpr int kTileWarps = kTileThreads / 32;

template <typename T>
using WarpCols = T[kFwdMaxWarpCols<T>];

template <typename T>
size_t forward_smem_bytes(int rows, int npad, bool outer) {
  const int rows4 = round_up(rows, 4);
  // per-warp column partials, 2 exchange buffers, guard max/sum/flag
  size_t scratch = static_cast<size_t>(kTileWarps + 5) * npad;
  if (outer) scratch = std::max(scratch, static_cast<size_t>(kGemmChunk) * (rows4 + npad));
  return sizeof(T) * (static_cast<size_t>(rows4) * npad + rows4 + npad + scratch);
}

// Rows go kRowGroup at a time through a warp: independent sums and interleaved shuffles hide
// the reduction latency.
constexpr int kRowGroup = 4;

// Over this warp's rows i: the row step f_i <- f_i - log2 sum_j exp2(L_ij + f_i + g_j) when
// `update_rows` (writing f_i to `row_pot_t[i]` in natural units), then, when `accumulate`,
// colacc[k] += exp2(L_ij + f_i + g_j) with the new f_i, for the lane's columns j = lane + 32 k.
template <typename T>
__device__ void row_pass(const T* Lt, T* f, const WarpCols<T>& greg, WarpCols<T>& colacc, int n,
                         int npad, int rows, bool update_rows, bool accumulate, T* row_pot_t) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int i0 = warp * kRowGroup; i0 < rows; i0 += warps * kRowGroup) {
    T fnew[kRowGroup];
#pragma unroll
    for (int r = 0; r < kRowGroup; ++r) fnew[r] = i0 + r < rows ? f[i0 + r] : T(0);
    if (update_rows) {
      T s[kRowGroup];
#pragma unroll
      for (int r = 0; r < kRowGroup; ++r) {
        s[r] = 0;
        if (i0 + r >= rows) continue;  // warp-uniform
        const T* Li = Lt + (i0 + r) * npad;
#pragma unroll
        for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
          if (lane + 32 * k >= n) break;
          s[r] += exp2_fast(Li[lane + 32 * k] + fnew[r] + greg[k]);
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int r = 0; r < kRowGroup; ++r) s[r] += __shfl_xor_sync(kFullMask, s[r], o);
#pragma unroll
      for (int r = 0; r < kRowGroup; ++r) {
        const int i = i0 + r;
        if (i >= rows) break;
        const T* Li = Lt + i * npad;
        const T fi = fnew[r];
        T lse;
        if (s[r] >= underflow_bound<T>()) {
          lse = log2_acc(s[r]);
        } else {  // warp-uniform: the whole row underflows, redo it with a max pass
          T m = neg_inf<T>();
#pragma unroll
          for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
            if (lane + 32 * k >= n) break;
            m = max(m, Li[lane + 32 * k] + fi + greg[k]);
          }
          m = warp_max(m);
          T s2 = 0;
#pragma unroll
          for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
            if (lane + 32 * k >= n) break;
            s2 += exp2_fast(Li[lane + 32 * k] + fi + greg[k] - m);
          }
          lse = m + log2_acc(warp_sum(s2));
        }
        fnew[r] = fi - lse;
        if (lane == 0) {
          f[i] = fnew[r];
          row_pot_t[i] = static_cast<T>(fnew[r] * kLn2);
        }
      }
    }
    if (!accumulate) continue;
#pragma unroll
    for (int r = 0; r < kRowGroup; ++r) {
      if (i0 + r >= rows) break;
      const T* Li = Lt + (i0 + r) * npad;
#pragma unroll
      for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
        if (lane + 32 * k >= n) break;
        colacc[k] += exp2_fast(Li[lane + 32 * k] + fnew[r] + greg[k]);
      }
    }
  }
}

// The column step g_j <- g_j - log2 total_j from every warp's partial sums `colacc`: the totals
// over the warps (in warp order, into this CTA's exchange buffer `ex`) and over the ranks (in
// rank order, one thread per column), into g in shared memory, then into every warp's registers.
template <typename T>
__device__ void column_step(const Cluster& cl, const T* Lt, const T* f, T* g, WarpCols<T>& greg,
                            const WarpCols<T>& colacc, T* part, T* ex, T* guard, int n, int npad,
                            int rows) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  auto plus = [](T x, T y) { return x + y; };
#pragma unroll
  for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
    if (lane + 32 * k >= n) break;
    part[warp * npad + lane + 32 * k] = colacc[k];
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    T s = 0;
    for (int w = 0; w < warps; ++w) s += part[w * npad + j];
    ex[j] = s;
  }
  cl.sync();
  const T bound = underflow_bound<T>();
  T* gmax = guard;
  T* gsum = guard + npad;
  T* flag = guard + 2 * npad;
  int need = 0;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const T total = cluster_combine(cl, ex, j, T(0), plus);
    flag[j] = total < bound;
    if (total >= bound) g[j] -= log2_acc(total);
    need |= total < bound;
  }
  if (__syncthreads_or(need)) {  // identical on every rank: the totals are
    // Rare: a column whose every entry underflows. Redo it as max + log2(sum(exp2(x - max))).
    auto maxf = [](T x, T y) { return max(x, y); };
    cta_column_reduce(n, npad, rows, part, gmax, neg_inf<T>(),
                      [&](int i, int j) { return Lt[i * npad + j] + f[i] + g[j]; }, maxf);
    cl.sync();
    for (int j = threadIdx.x; j < n; j += blockDim.x)
      ex[j] = cluster_combine(cl, gmax, j, neg_inf<T>(), maxf);
    __syncthreads();
    cta_column_reduce(n, npad, rows, part, gsum, T(0),
                      [&](int i, int j) { return exp2_fast(Lt[i * npad + j] + f[i] + g[j] - ex[j]); },
                      plus);
    cl.sync();
    for (int j = threadIdx.x; j < n; j += blockDim.x)
      if (flag[j] != T(0)) g[j] -= ex[j] + log2_acc(cluster_combine(cl, gsum, j, T(0), plus));
    cl.sync();
  }
#pragma unroll
  for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
    if (lane + 32 * k >= n) break;
    greg[k] = g[lane + 32 * k];
  }
}

template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    sinkhorn_tile_forward(TileArgs<T> a, T* P, T* row_pot, T* col_pot) {
  const Cluster cl;
  const int rank = cl.rank();
  const int64_t b = blockIdx.x / cl.size();
  const int n = a.n, npad = a.npad, rows4 = round_up(a.rows, 4), iters = a.n_iters;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TileRows tr(rank, a.rows, n);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Lt = reinterpret_cast<T*>(smem_raw);
  T* f = Lt + rows4 * npad;
  T* g = f + rows4;
  T* scratch = g + npad;  // GEMM staging, then the column-step buffers
  T* part = scratch;      // kTileWarps x npad
  T* ex = part + kTileWarps * npad;  // two exchange buffers, alternating by iteration
  T* guard = ex + 2 * npad;

  load_tile(Lt, scratch, a, b, tr);
  for (int i = threadIdx.x; i < tr.count; i += blockDim.x) f[i] = T(0);
  // The column step does not depend on g's starting value; -max_i L_ij keeps every term <= 1.
  auto maxf = [](T x, T y) { return max(x, y); };
  if (iters > 0)
    cta_column_reduce(n, npad, tr.count, part, ex, neg_inf<T>(),
                      [&](int i, int j) { return Lt[i * npad + j]; }, maxf);
  cl.sync();
  for (int j = threadIdx.x; j < n; j += blockDim.x)
    g[j] = iters > 0 ? -cluster_combine(cl, ex, j, neg_inf<T>(), maxf) : T(0);
  cl.sync();  // every rank read the exchange buffer before anyone reuses it; f and g are set

  WarpCols<T> greg, colacc;
#pragma unroll
  for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
    if (lane + 32 * k >= n) break;
    greg[k] = g[lane + 32 * k];
    colacc[k] = T(0);
  }
  if (iters > 0) row_pass<T>(Lt, f, greg, colacc, n, npad, tr.count, false, true, nullptr);
  for (int t = 0; t < iters; ++t) {
    column_step(cl, Lt, f, g, greg, colacc, part, ex + (t & 1) * npad, guard, n, npad, tr.count);
#pragma unroll
    for (int k = 0; k < kFwdMaxWarpCols<T>; ++k) {
      if (lane + 32 * k >= n) break;
      if (rank == 0 && warp == 0)
        col_pot[(b * iters + t) * n + lane + 32 * k] = static_cast<T>(greg[k] * kLn2);
      colacc[k] = T(0);
    }
    row_pass<T>(Lt, f, greg, colacc, n, npad, tr.count, true, t + 1 < iters,
             row_pot + (b * iters + t) * n + tr.row0);
  }
  __syncthreads();  // f of every row
  T* out = P + (b * n + tr.row0) * static_cast<int64_t>(n);
  for (int idx = threadIdx.x; idx < tr.count * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    out[idx] = exp2_fast(Lt[i * npad + j] + f[i] + g[j]);
  }
  cl.sync();  // no CTA leaves while a peer may still read its shared memory
}

// Whether every element of s * scale is finite: one reduction on the device, one bool back.
inline bool all_finite(const Tensor& s, double scale) {
  namespace st = torch::stable;
  const Tensor k = st::full({}, scale, s.scalar_type(), std::nullopt, s.device());
  const Tensor ok = aten::all(aten::isfinite(aten::mul(s, k)));
  return *st::to(ok, st::Device(torch::headeronly::DeviceType::CPU)).const_data_ptr<bool>();
}

// Runs the forward on (B, n, n) scores, or on f0 @ f1^T when `scores` is undefined. Outputs are
// preallocated, contiguous, of the compute dtype T. Returns false for a non-finite input.
template <typename T>
bool sinkhorn_forward_cuda(const Tensor& scores, const Tensor& f0, const Tensor& f1,
                           int64_t n_iters, double tau, Tensor& P, Tensor& row_pot,
                           Tensor& col_pot) {
  const bool outer = !scores.defined();
  const int64_t B = P.size(0);
  const int n = static_cast<int>(P.size(1));
  const cudaStream_t stream = current_stream();
  TileArgs<T> a{outer ? nullptr : scores.const_data_ptr<T>(),
                outer ? f0.const_data_ptr<T>() : nullptr,
                outer ? f1.const_data_ptr<T>() : nullptr,
                outer ? static_cast<int>(f0.size(2)) : 0,
                n, round_up(n, 32), 0, static_cast<int>(n_iters),
                static_cast<T>(kLog2e / tau), VerdictSlots{}};
  const TilePlan plan = plan_tile(sinkhorn_tile_forward<T>, outer, B, n, 32 * kFwdMaxWarpCols<T>,
                                  [&](int rows) { return forward_smem_bytes<T>(rows, a.npad, outer); });
  if (plan.cluster > 0) {
    a.rows = plan.rows;
    FiniteVerdicts& verdicts = thread_verdicts();
    a.verdict = verdicts.prepare(B * plan.cluster, stream);
    launch_tile(sinkhorn_tile_forward<T>, plan, B, stream, a, P.mutable_data_ptr<T>(),
                row_pot.mutable_data_ptr<T>(), col_pot.mutable_data_ptr<T>());
    return verdicts.all_finite(stream);  // as soon as every CTA has loaded its rows
  }
  // Too large for the chip: the scores go through global memory (L2-resident up to n ~ 2500).
  const Tensor s = outer ? aten::bmm(f0, torch::stable::transpose(f1, 1, 2)) : scores;
  if (!all_finite(s, 1.0 / tau)) return false;
  sinkhorn_global_forward<T>(s, n_iters, tau, P, row_pot, col_pot, stream);
  return true;
}

// The op: (scores) or (f0, f1) of any floating dtype; float16/bfloat16 are computed in float32
// and the outputs cast back. Returns (P, row_pot, col_pot) in the input dtype.
inline std::tuple<Tensor, Tensor, Tensor> sinkhorn_forward_op(
    const Tensor& scores, const Tensor& f0, const Tensor& f1, int64_t n_iters,
    double tau, const char* what) {
  const Tensor& ref = scores.defined() ? scores : f0;
  const ScalarType dtype = ref.scalar_type();
  const ScalarType compute = dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  auto prep = [&](const Tensor& t) {
    return t.defined() ? torch::stable::contiguous(torch::stable::to(t, compute)) : t;
  };
  const Tensor s = prep(scores), a = prep(f0), b = prep(f1);
  const int64_t B = ref.size(0), n = ref.size(1);
  Tensor P = torch::stable::new_empty(ref, {B, n, n}, compute);
  Tensor row_pot = torch::stable::new_empty(ref, {B, n_iters, n}, compute);
  Tensor col_pot = torch::stable::new_empty(ref, {B, n_iters, n}, compute);
  if (B > 0 && n > 0) {
    const bool ok = compute == ScalarType::Double
                        ? sinkhorn_forward_cuda<double>(s, a, b, n_iters, tau, P, row_pot, col_pot)
                        : sinkhorn_forward_cuda<float>(s, a, b, n_iters, tau, P, row_pot, col_pot);
    DA_CHECK(ok, what, " must be finite (no NaN or inf, also after dividing by tau = ", tau, ")");
  }
  namespace st = torch::stable;
  return {st::to(P, dtype), st::to(row_pot, dtype), st::to(col_pot, dtype)};
}

}  // namespace cuda
}  // namespace deepalign
