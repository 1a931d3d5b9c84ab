// The resident tile shared by the fused Sinkhorn kernels (forward and backward, plain scores or
// f0 @ f1^T). One matrix is split by rows over a thread-block cluster of 1-8 CTAs; each CTA keeps
// its rows of L = scores * log2(e) / tau in shared memory for all iterations, and column
// reductions are combined across the cluster through distributed shared memory, rank by rank.
#pragma once
#include <cooperative_groups.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>


#include "cuda/finite_verdict.cuh"
#include "cuda/utils.cuh"

namespace deepalign {
namespace cuda {

constexpr int kTileThreads = 512;
constexpr int kGemmChunk = 8;   // feature columns staged per step of the in-tile f0 @ f1^T
constexpr int kMaxCluster = 8;  // portable cluster size

__host__ __device__ inline int round_up(int a, int m) { return (a + m - 1) / m * m; }

// The cluster of CTAs that shares one matrix; a plain CTA below sm_90.
struct Cluster {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __device__ int rank() const { return cooperative_groups::this_cluster().block_rank(); }
  __device__ int size() const { return cooperative_groups::this_cluster().num_blocks(); }
  __device__ void sync() const { cooperative_groups::this_cluster().sync(); }
  template <typename T>
  __device__ T* map(T* p, int r) const {
    return cooperative_groups::this_cluster().map_shared_rank(p, r);
  }
#else
  __device__ int rank() const { return 0; }
  __device__ int size() const { return 1; }
  __device__ void sync() const { __syncthreads(); }
  template <typename T>
  __device__ T* map(T* p, int) const { return p; }
#endif
};

template <typename T>
struct TileArgs {
  const T* scores;  // (B, n, n), or nullptr when the tile is f0 @ f1^T
  const T* f0;      // (B, n, d)
  const T* f1;      // (B, n, d)
  int d;
  int n;
  int npad;  // row stride of the tile, a multiple of 32
  int rows;  // rows per CTA
  int n_iters;
  T scale;   // log2(e) / tau
  VerdictSlots verdict;  // where each CTA reports a non-finite tile; no slots: no check
};

// Where this CTA's rows start, and how many of them exist (the last CTA may hold fewer).
struct TileRows {
  int row0, count;
  __device__ TileRows(int rank, int rows, int n) : row0(rank * rows) {
    count = max(0, min(rows, n - row0));
  }
};

template <typename T>
struct Quad { T v[4]; };

__device__ __forceinline__ Quad<float> load4(const float* p) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  return {{a.x, a.y, a.z, a.w}};
}
__device__ __forceinline__ Quad<double> load4(const double* p) {
  const double2 a = reinterpret_cast<const double2*>(p)[0];
  const double2 b = reinterpret_cast<const double2*>(p)[1];
  return {{a.x, a.y, b.x, b.y}};
}
__device__ __forceinline__ void store4(float* p, const Quad<float>& q) {
  *reinterpret_cast<float4*>(p) = make_float4(q.v[0], q.v[1], q.v[2], q.v[3]);
}
__device__ __forceinline__ void store4(double* p, const Quad<double>& q) {
  reinterpret_cast<double2*>(p)[0] = make_double2(q.v[0], q.v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(q.v[2], q.v[3]);
}

// Lt[i][j] = scale * (f0[row0 + i] . f1[j]) for this CTA's rows, by 4x4 micro-tiles accumulated in
// shared memory over chunks of kGemmChunk features, in full precision (no TF32). `stage` holds
// kGemmChunk * (rows4 + npad) elements.
template <typename T>
__device__ void outer_product_tile(T* Lt, T* stage, const TileArgs<T>& a, int64_t b,
                                   const TileRows& tr) {
  const int rows4 = round_up(a.rows, 4), npad = a.npad;
  T* As = stage;                      // [kGemmChunk][rows4]
  T* Bs = stage + kGemmChunk * rows4;  // [kGemmChunk][npad]
  const T* f0 = a.f0 + (b * a.n + tr.row0) * static_cast<int64_t>(a.d);
  const T* f1 = a.f1 + b * a.n * static_cast<int64_t>(a.d);
  for (int idx = threadIdx.x; idx < rows4 * npad; idx += blockDim.x) Lt[idx] = T(0);
  const int tiles_j = npad / 4, tiles = (rows4 / 4) * tiles_j;
  for (int k0 = 0; k0 < a.d; k0 += kGemmChunk) {
    __syncthreads();  // the previous chunk is consumed (and Lt zeroed)
    for (int idx = threadIdx.x; idx < rows4 * kGemmChunk; idx += blockDim.x) {
      const int i = idx / kGemmChunk, kk = idx - i * kGemmChunk;
      As[kk * rows4 + i] =
          (i < tr.count && k0 + kk < a.d) ? f0[i * static_cast<int64_t>(a.d) + k0 + kk] * a.scale
                                          : T(0);
    }
    for (int idx = threadIdx.x; idx < npad * kGemmChunk; idx += blockDim.x) {
      const int j = idx / kGemmChunk, kk = idx - j * kGemmChunk;
      Bs[kk * npad + j] =
          (j < a.n && k0 + kk < a.d) ? f1[j * static_cast<int64_t>(a.d) + k0 + kk] : T(0);
    }
    __syncthreads();
    for (int t = threadIdx.x; t < tiles; t += blockDim.x) {
      const int i0 = (t / tiles_j) * 4, j0 = (t % tiles_j) * 4;
      Quad<T> acc[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[r] = load4(Lt + (i0 + r) * npad + j0);
#pragma unroll
      for (int kk = 0; kk < kGemmChunk; ++kk) {
        const Quad<T> x = load4(As + kk * rows4 + i0), y = load4(Bs + kk * npad + j0);
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r].v[c] = fma(x.v[r], y.v[c], acc[r].v[c]);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) store4(Lt + (i0 + r) * npad + j0, acc[r]);
    }
  }
  __syncthreads();
}

// Fills this CTA's rows of the tile from scores, or from f0 @ f1^T when a.scores is null, and
// reports whether every entry is finite (the caller raises: a silent NaN plan is never returned).
// Ends with a block barrier.
template <typename T>
__device__ void load_tile(T* Lt, T* stage, const TileArgs<T>& a, int64_t b, const TileRows& tr) {
  const bool check = a.verdict.slots != nullptr;
  int bad = 0;
  if (a.scores == nullptr) {
    outer_product_tile(Lt, stage, a, b, tr);
    for (int idx = threadIdx.x; check && idx < tr.count * a.n; idx += blockDim.x) {
      const int i = idx / a.n, j = idx - i * a.n;
      bad |= !isfinite(Lt[i * a.npad + j]);
    }
  } else {
    const T* src = a.scores + (b * a.n + tr.row0) * static_cast<int64_t>(a.n);
    for (int idx = threadIdx.x; idx < tr.count * a.n; idx += blockDim.x) {
      const int i = idx / a.n, j = idx - i * a.n;
      const T x = src[idx] * a.scale;
      bad |= !isfinite(x);
      Lt[i * a.npad + j] = x;
    }
  }
  publish_verdict(a.verdict, __syncthreads_or(bad));
}

// out[j] = comb over this CTA's rows i of elem(i, j), for every column j < n, in a fixed order:
// row slices in parallel into `part` (S x npad), then the slices in index order.
template <typename T, typename Elem, typename Comb>
__device__ void cta_column_reduce(int n, int npad, int rows, T* part, T* out, T init, Elem elem,
                                  Comb comb) {
  const int slices = max(1, static_cast<int>(blockDim.x) / npad);
  const int per = (rows + slices - 1) / slices;
  for (int c = threadIdx.x; c < slices * npad; c += blockDim.x) {
    const int s = c / npad, j = c - s * npad;
    if (j >= n) continue;
    T acc[4] = {init, init, init, init};  // four independent chains, combined in a fixed order
    const int end = min(rows, (s + 1) * per);
    int i = s * per;
    for (; i + 4 <= end; i += 4)
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] = comb(acc[u], elem(i + u, j));
    for (; i < end; ++i) acc[0] = comb(acc[0], elem(i, j));
    part[s * npad + j] = comb(comb(acc[0], acc[1]), comb(acc[2], acc[3]));
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    T acc = init;
    for (int s = 0; s < slices; ++s) acc = comb(acc, part[s * npad + j]);
    out[j] = acc;
  }
}

// comb over the cluster ranks, in rank order, of buf[j] (every rank holds its own buf). All the
// reads are issued before the first is used: distributed shared memory has a long latency.
template <typename T, typename Comb>
__device__ T cluster_combine(const Cluster& cl, T* buf, int j, T init, Comb comb) {
  const int size = cl.size();
  T v[kMaxCluster];
#pragma unroll
  for (int r = 0; r < kMaxCluster; ++r) v[r] = r < size ? cl.map(buf, r)[j] : init;
  T acc = init;
#pragma unroll
  for (int r = 0; r < kMaxCluster; ++r)
    if (r < size) acc = comb(acc, v[r]);
  return acc;
}

// Launch shape of a resident kernel: `cluster` CTAs per matrix, `rows` rows each.
struct TilePlan {
  int cluster = 0;  // 0: the matrix does not fit on chip, use the global-memory path
  int rows = 0;
  int npad = 0;
  size_t smem = 0;
  bool sm90 = false;  // launched with a cluster attribute (required by the cluster barrier)
};

inline int device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  DA_CUDA_CHECK(cudaGetDevice(&device));
  DA_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

template <typename Kernel>
cudaLaunchConfig_t tile_config(Kernel kernel, const TilePlan& plan, int64_t batch,
                               cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(batch * plan.cluster));
  config.blockDim = dim3(kTileThreads);
  config.dynamicSmemBytes = plan.smem;
  config.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = plan.cluster;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = plan.sm90 ? 1 : 0;
  return config;
}

// Smallest cluster whose CTAs fit their rows (smem_bytes(rows) <= the opt-in limit), grown while
// the batch leaves SMs idle and every CTA keeps >= 16 rows, and shrunk again if the hardware
// cannot co-schedule it. Clusters need sm_90; below, a matrix must fit one CTA.
template <typename Kernel, typename SmemBytes>
TilePlan plan_tile_uncached(Kernel kernel, int64_t batch, int n, int max_n, SmemBytes smem_bytes) {
  TilePlan plan;
  if (n > max_n) return plan;
  plan.sm90 = device_attribute(cudaDevAttrComputeCapabilityMajor) >= 9;
  int max_cluster = plan.sm90 ? kMaxCluster : 1;
  // Tuning knob (benchmarks): DEEPALIGN_MAX_CLUSTER caps the CTAs per matrix.
  if (const char* cap = std::getenv("DEEPALIGN_MAX_CLUSTER"))
    max_cluster = std::max(1, std::min(max_cluster, std::atoi(cap)));
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  const size_t limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  int fit = 1;
  while (fit <= max_cluster && smem_bytes(ceil_div(n, fit)) > limit) fit *= 2;
  if (fit > max_cluster) return plan;
  // Once per kernel and device (plans are cached): any plan's shared memory may be requested.
  DA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(limit)));
  int cs = fit;
  while (cs * 2 <= max_cluster && batch * cs * 2 <= sms && ceil_div(n, cs * 2) >= 16) cs *= 2;
  plan.npad = round_up(n, 32);
  for (; cs >= fit; cs /= 2) {
    plan.cluster = cs;
    plan.rows = ceil_div(n, cs);
    plan.smem = smem_bytes(plan.rows);
    if (!plan.sm90) return plan;
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config = tile_config(kernel, plan, cs, nullptr, &attr);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) == cudaSuccess && clusters > 0)
      return plan;
    (void)cudaGetLastError();  // an unschedulable shape is not an error: try a smaller one
  }
  plan.cluster = 0;
  return plan;
}

// plan_tile_uncached, memoised per (kernel, variant, batch, n, device): the occupancy query
// costs more than the kernel launch it configures. `variant` tells apart shared-memory layouts
// of one kernel (plain scores or f0 @ f1^T).
template <typename Kernel, typename SmemBytes>
TilePlan plan_tile(Kernel kernel, int variant, int64_t batch, int n, int max_n,
                   SmemBytes smem_bytes) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int64_t, int, int>, TilePlan> cache;
  int device = 0;
  DA_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(variant, batch, n, device);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const TilePlan plan = plan_tile_uncached(kernel, batch, n, max_n, smem_bytes);
  const std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() > 4096) cache.clear();
  cache.emplace(key, plan);
  return plan;
}

// Launches `kernel` on `batch` matrices with plan.cluster CTAs each.
template <typename Kernel, typename... Args>
void launch_tile(Kernel kernel, const TilePlan& plan, int64_t batch, cudaStream_t stream,
                 Args... args) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t config = tile_config(kernel, plan, batch, stream, &attr);
  DA_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
  DA_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace deepalign
