// CUDA kernel of deepalign::linear_assignment: exact batched rectangular assignment, one thread
// block per problem. Same algorithm as the CPU solver (csrc/cpu/linear_assignment_cpu.cpp):
// row-reduction warm start (u_i = min_j c_ij, v = 0, greedy matching on tight edges), then
// Jonker-Volgenant shortest augmenting paths (Crouse's form, as scipy) from each unmatched row.
// The Dijkstra scan over the columns and its argmin run across the block (each thread owns the
// columns j = tid mod threads; warp shuffles, then the warps in index order: deterministic).
// Augmentations and dual updates stay exact in float64. A cost matrix small enough is staged in
// shared memory, so the latency-bound scans read on-chip.
//
// Hungarian-rounding fallback: a problem whose column count does not fit the block's shared
// memory (m above ~9000) is solved by the CPU kernel instead, with one device-to-host copy of
// the whole batch and one copy of the result back.
#include <torch/csrc/stable/library.h>

#include "checks.h"
#include "cuda/assignment_cuda.h"
#include "cuda/stable_cuda.cuh"
#include "cuda/utils.cuh"
#include "stable_ops.h"

namespace deepalign::cuda {
namespace {

constexpr double kInf = __builtin_huge_val();
constexpr int kStageLimit = 96 * 1024;  // bytes of cost matrix worth staging on chip

enum Status : int { kOk = 0, kNaN = 1, kWrongInf = 2, kInfeasible = 3 };

struct Best {
  double val;
  int taken;  // 0 for a free column: among equal distances a free one ends the search
  int col;
  __device__ bool better_than(const Best& o) const {
    if (val != o.val) return val < o.val;
    if (taken != o.taken) return taken < o.taken;
    return col < o.col;
  }
};

__device__ Best warp_best(Best b) {
  for (int o = 16; o > 0; o >>= 1) {
    Best other{__shfl_xor_sync(kFullMask, b.val, o), __shfl_xor_sync(kFullMask, b.taken, o),
               __shfl_xor_sync(kFullMask, b.col, o)};
    if (other.better_than(b)) b = other;
  }
  return b;
}

// Shared-memory layout of one problem; `cost` points to the staged copy or to global memory.
template <typename T>
struct Workspace {
  double *u, *v, *spc;
  int *path, *row4col, *col4row;
  char *col_seen, *row_seen;
  Best* best;  // [2][warps]
  T* staged;
  __device__ Workspace(unsigned char* p, int n, int m, int warps) {
    u = reinterpret_cast<double*>(p);
    v = u + n;
    spc = v + m;
    best = reinterpret_cast<Best*>(spc + m);
    path = reinterpret_cast<int*>(best + 2 * warps);
    row4col = path + m;
    col4row = row4col + m;
    col_seen = reinterpret_cast<char*>(col4row + n);
    row_seen = col_seen + m;
    staged = reinterpret_cast<T*>(p + round_up16(static_cast<size_t>(row_seen + n - reinterpret_cast<char*>(p))));
  }
  __host__ __device__ static size_t round_up16(size_t x) { return (x + 15) / 16 * 16; }
  static size_t bytes(int n, int m, int warps) {
    return round_up16(sizeof(double) * (n + 2 * m) + sizeof(Best) * 2 * warps +
                      sizeof(int) * (2 * m + n) + m + n);
  }
};

template <typename T>
__global__ void assignment_kernel(const T* cost_in, int n, int m, bool maximize, bool stage,
                                  int64_t* cols, int* status) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tid = threadIdx.x, threads = blockDim.x, lane = tid & 31, warp = tid >> 5;
  const int warps = threads >> 5;
  const int64_t b = blockIdx.x;
  Workspace<T> w(smem_raw, n, m, warps);
  const T* cost = cost_in + b * n * static_cast<int64_t>(m);
  const double sign = maximize ? -1.0 : 1.0;
  // Validate (and stage) the whole matrix first: NaN, or -inf after the sign, is an error.
  int bad = 0;
  for (int64_t k = tid; k < static_cast<int64_t>(n) * m; k += threads) {
    const T x = cost[k];
    const double c = sign * static_cast<double>(x);
    bad |= isnan(c) ? 1 : (c == -kInf ? 2 : 0);
    if (stage) w.staged[k] = x;
  }
  bad = __syncthreads_or(bad & 1) ? kNaN : (__syncthreads_or(bad & 2) ? kWrongInf : kOk);
  if (bad != kOk) {
    if (tid == 0) status[b] = bad;
    return;
  }
  if (stage) cost = w.staged;
  auto c = [&](int i, int j) { return sign * static_cast<double>(cost[i * static_cast<int64_t>(m) + j]); };

  // Warm start: u_i = min_j c_ij (lowest index on ties), one warp per row.
  for (int j = tid; j < m; j += threads) {
    w.v[j] = 0;
    w.row4col[j] = -1;
  }
  for (int i = warp; i < n; i += warps) {
    Best bb{kInf, 0, m};
    for (int j = lane; j < m; j += 32) {
      const Best cand{c(i, j), 0, j};
      if (cand.better_than(bb)) bb = cand;
    }
    bb = warp_best(bb);
    if (lane == 0) {
      w.u[i] = bb.val;
      w.col4row[i] = bb.col;  // the row's argmin, matched below if still free
    }
  }
  __syncthreads();
  __shared__ int infeasible;
  if (tid == 0) {
    bool feasible = true;
    for (int i = 0; i < n; ++i) {
      const int j = w.col4row[i];
      feasible &= w.u[i] != kInf;
      if (j < m && w.row4col[j] < 0) {
        w.row4col[j] = i;
      } else {
        w.col4row[i] = -1;
      }
    }
    infeasible = !feasible;
    if (!feasible) status[b] = kInfeasible;
  }
  __syncthreads();
  if (infeasible) return;  // a row with no allowed column

  int parity = 0;
  for (int cur = 0; cur < n; ++cur) {
    if (w.col4row[cur] >= 0) continue;  // uniform: read after a barrier
    for (int j = tid; j < m; j += threads) {
      w.spc[j] = kInf;
      w.col_seen[j] = 0;
    }
    for (int i = tid; i < n; i += threads) w.row_seen[i] = 0;
    __syncthreads();
    double min_val = 0;
    int i = cur, sink = -1;
    while (sink < 0) {
      if (tid == 0) w.row_seen[i] = 1;
      const double base = min_val - w.u[i];
      Best mine{kInf, 1, m};
      for (int j = tid; j < m; j += threads) {
        if (w.col_seen[j]) continue;
        const double r = base + c(i, j) - w.v[j];
        if (r < w.spc[j]) {
          w.spc[j] = r;
          w.path[j] = i;
        }
        const Best cand{w.spc[j], w.row4col[j] >= 0, j};
        if (cand.better_than(mine)) mine = cand;
      }
      mine = warp_best(mine);
      if (lane == 0) w.best[parity * warps + warp] = mine;
      __syncthreads();
      Best low = w.best[parity * warps];
      for (int k = 1; k < warps; ++k)
        if (w.best[parity * warps + k].better_than(low)) low = w.best[parity * warps + k];
      parity ^= 1;
      if (low.val == kInf) {  // uniform: no free column reachable
        if (tid == 0) status[b] = kInfeasible;
        return;
      }
      min_val = low.val;
      if (low.col % threads == tid) w.col_seen[low.col] = 1;  // owned by this thread
      if (w.row4col[low.col] < 0)
        sink = low.col;
      else
        i = w.row4col[low.col];
    }
    __syncthreads();  // spc and path of every column are visible
    if (tid == 0) w.u[cur] += min_val;
    for (int r = tid; r < n; r += threads)
      if (w.row_seen[r] && r != cur) w.u[r] += min_val - w.spc[w.col4row[r]];
    for (int j = tid; j < m; j += threads)
      if (w.col_seen[j]) w.v[j] -= min_val - w.spc[j];
    __syncthreads();
    if (tid == 0) {
      for (int j = sink;;) {
        const int r = w.path[j];
        w.row4col[j] = r;
        const int prev = w.col4row[r];
        w.col4row[r] = j;
        j = prev;
        if (r == cur) break;
      }
    }
    __syncthreads();
  }
  for (int r = tid; r < n; r += threads) cols[b * n + r] = w.col4row[r];
  if (tid == 0) status[b] = kOk;
}

template <typename T>
bool launch(const Tensor& cost, bool maximize, Tensor& cols, Tensor& status) {
  const int64_t batch = cost.size(0);
  const int n = static_cast<int>(cost.size(1)), m = static_cast<int>(cost.size(2));
  int device = 0, limit = 0;
  DA_CUDA_CHECK(cudaGetDevice(&device));
  DA_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int threads = std::min(512, std::max(32, (m + 31) / 32 * 32));
  limit -= 64;  // the kernel's static shared memory
  size_t bytes = Workspace<T>::bytes(n, m, threads / 32);
  if (bytes > static_cast<size_t>(limit)) return false;
  const size_t staged = sizeof(T) * static_cast<size_t>(n) * m;
  const bool stage = staged <= kStageLimit && bytes + staged <= static_cast<size_t>(limit);
  if (stage) bytes += staged;
  DA_CUDA_CHECK(cudaFuncSetAttribute(assignment_kernel<T>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  assignment_kernel<T><<<static_cast<unsigned>(batch), threads, bytes,
                         current_stream()>>>(
      cost.const_data_ptr<T>(), n, m, maximize, stage, cols.mutable_data_ptr<int64_t>(),
      status.mutable_data_ptr<int>());
  DA_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

Tensor cpu_fallback(const Tensor& cost, bool maximize) {
  namespace st = torch::stable;
  const Tensor on_cpu = st::to(cost, st::Device(torch::headeronly::DeviceType::CPU));
  return st::to(call_op("deepalign::linear_assignment", "", on_cpu, maximize), cost.device());
}

Tensor linear_assignment_cuda(const Tensor& cost, bool maximize) {
  return linear_assignment_cuda_named(cost, maximize, "cost");
}

}  // namespace

Tensor linear_assignment_cuda_named(const Tensor& cost, bool maximize, const char* name) {
  check_assignment_input(cost, name);
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  const DeviceGuard guard(cost.get_device_index());
  const Tensor c = torch::stable::contiguous(cost);
  Tensor cols = torch::stable::new_empty(cost, {batch, n}, ScalarType::Long);
  if (batch == 0 || n == 0) return cols;
  DA_CHECK(batch <= INT32_MAX && m <= INT32_MAX, name, " is too large: ", shape(cost));
  Tensor status = torch::stable::new_empty(cost, {batch}, ScalarType::Int);
  const bool done = c.scalar_type() == ScalarType::Double
                        ? launch<double>(c, maximize, cols, status)
                        : launch<float>(c, maximize, cols, status);
  if (!done) return cpu_fallback(c, maximize);
  // One device-to-host copy of the per-problem status, then the CPU solver's error messages.
  const Tensor st =
      torch::stable::to(status, torch::stable::Device(torch::headeronly::DeviceType::CPU));
  const int* s = st.const_data_ptr<int>();
  for (int64_t b = 0; b < batch; ++b) {
    DA_CHECK(s[b] != kNaN, name, " must not contain NaN (matrix ", b, " of the batch does)");
    DA_CHECK(s[b] != kWrongInf, name, " must not contain ",
             maximize ? "+inf with maximize=True (-inf marks a forbidden pair)"
                      : "-inf (+inf marks a forbidden pair)",
             "; matrix ", b, " of the batch does");
    DA_CHECK(s[b] != kInfeasible, name, " matrix ", b,
             " of the batch has no feasible assignment: its allowed (finite) entries admit ",
             "no matching of every row to a distinct column");
  }
  return cols;
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CUDA, m) {
  m.impl("linear_assignment", TORCH_BOX(&linear_assignment_cuda));
}

}  // namespace deepalign::cuda
