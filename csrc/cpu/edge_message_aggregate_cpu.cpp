// CPU kernels of deepalign::edge_message_aggregate and its backward: the edge update and the
// per-node aggregation of one message-passing layer over a weight-space graph,
//   msg[b, k]    = relu(x_src[b, src[k]] + x_dst[b, dst[k]] + edge[b, k])
//   to_dst[b, v] = sum_{k : dst[k] = v} msg[b, k]
//   to_src[b, u] = sum_{k : src[k] = u} msg[b, k]
// for a graph whose structure (src, dst) is shared by the B networks of a batch.
//
// ATen takes two gathers, two adds, a ReLU and two index_adds: five edge-sized intermediates,
// each a trip through memory for an edge that has only c values. Here each edge is computed in
// registers, written once and added to both of its nodes on the spot; the backward recomputes
// the ReLU mask from the inputs instead of storing it.
//
// Work is split over networks and, when there are fewer networks than threads, over channel
// ranges: a task owns channels [c0, c1) of one network, so its scatter targets are its own and
// no atomics (or their nondeterminism) are needed.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <string>
#include <vector>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/parallel.h"

namespace deepalign::cpu {
namespace {

struct Task {
  int64_t b, c0, c1;
};

// One task per (network, channel range): whole networks when they outnumber the threads,
// otherwise each network's channels in up to threads / B ranges of at least 8 channels.
std::vector<Task> split_tasks(int64_t batch, int64_t c) {
  const int64_t threads = torch::stable::get_num_threads();
  int64_t parts = batch >= threads ? 1 : (threads + batch - 1) / batch;
  parts = std::max<int64_t>(1, std::min(parts, c / 8));
  const int64_t width = (c + parts - 1) / parts;
  std::vector<Task> tasks;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c0 = 0; c0 < c; c0 += width) tasks.push_back({b, c0, std::min(c, c0 + width)});
  return tasks;
}

void check_inputs(const Tensor& x_src, const Tensor& x_dst, const Tensor& edge, const Tensor& src,
                  const Tensor& dst) {
  DA_CHECK_DIM(x_src, 3, "x_src", "(B, N, c)");
  DA_CHECK_DIM(edge, 3, "edge", "(B, E, c)");
  DA_CHECK_REAL(x_src, "x_src");
  DA_CHECK_SAME_DTYPE(x_src, x_dst, "x_src", "x_dst");
  DA_CHECK_SAME_DTYPE(x_src, edge, "x_src", "edge");
  DA_CHECK(same_shape(x_src, x_dst), "x_dst must have x_src's shape ", shape(x_src), ", got ",
           shape(x_dst));
  DA_CHECK(edge.size(0) == x_src.size(0) && edge.size(2) == x_src.size(2),
           "edge (B, E, c) must agree with x_src (B, N, c) on B and c, got ", shape(edge),
           " and ", shape(x_src));
  for (const auto& [t, name] : {std::pair{&src, "src"}, std::pair{&dst, "dst"}}) {
    DA_CHECK(t->scalar_type() == ScalarType::Long && t->dim() == 1 &&
                 t->size(0) == edge.size(1),
             name, " must be int64 (E,) with E = ", edge.size(1), ", got ", dtype_name(*t), " ",
             shape(*t));
  }
}

// Every index in [0, n): checked once here, so the loops below never leave their tensors.
void check_indices(const Tensor& index, int64_t n, const char* name) {
  const int64_t* p = index.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < index.size(0); ++k)
    DA_CHECK(p[k] >= 0 && p[k] < n, name, "[", k, "] = ", p[k], " is outside [0, ", n,
             ") (N = x_src.size(1) nodes)");
}

// One network's channels [c0, c1) of the forward; returns false when it read a NaN or inf.
template <typename T>
bool forward_task(const T* __restrict__ xs, const T* __restrict__ xd, const T* __restrict__ e,
                  const int64_t* src, const int64_t* dst, int64_t n_edges, int64_t c, int64_t c0,
                  int64_t c1, T* __restrict__ msg, T* __restrict__ to_dst,
                  T* __restrict__ to_src) {
  // v * 0 is 0 for a finite v and NaN otherwise: one running probe catches any NaN or inf
  // read, at the cost of a multiply-add that vectorises with the rest
  T probe = 0;
  for (int64_t k = 0; k < n_edges; ++k) {
    const T* a = xs + src[k] * c;
    const T* d = xd + dst[k] * c;
    const T* ek = e + k * c;
    T* out = msg + k * c;
    T* td = to_dst + dst[k] * c;
    T* ts = to_src + src[k] * c;
#pragma omp simd reduction(+ : probe)
    for (int64_t ch = c0; ch < c1; ++ch) {
      const T pre = a[ch] + d[ch] + ek[ch];
      probe += pre * T(0);
      const T v = pre > T(0) ? pre : T(0);
      out[ch] = v;
      td[ch] += v;
      ts[ch] += v;
    }
  }
  return probe == T(0);
}

// The backward of one task: g = (grad_msg + grad_to_dst[dst] + grad_to_src[src]) * (pre > 0),
// grad_edge = g, and g scattered to both nodes of its edge.
template <typename T>
void backward_task(const T* __restrict__ gm, const T* __restrict__ gtd, const T* __restrict__ gts,
                   const T* __restrict__ xs, const T* __restrict__ xd, const T* __restrict__ e,
                   const int64_t* src, const int64_t* dst, int64_t n_edges, int64_t c, int64_t c0,
                   int64_t c1, T* __restrict__ g_edge, T* __restrict__ g_src,
                   T* __restrict__ g_dst) {
  for (int64_t k = 0; k < n_edges; ++k) {
    const int64_t s = src[k] * c, d = dst[k] * c;
#pragma omp simd
    for (int64_t ch = c0; ch < c1; ++ch) {
      const T pre = xs[s + ch] + xd[d + ch] + e[k * c + ch];
      const T g = pre > T(0) ? gm[k * c + ch] + gtd[d + ch] + gts[s + ch] : T(0);
      g_edge[k * c + ch] = g;
      g_src[s + ch] += g;
      g_dst[d + ch] += g;
    }
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> edge_message_aggregate_cpu(const Tensor& x_src_in,
                                                              const Tensor& x_dst_in,
                                                              const Tensor& edge_in,
                                                              const Tensor& src_in,
                                                              const Tensor& dst_in) {
  check_inputs(x_src_in, x_dst_in, edge_in, src_in, dst_in);
  const Tensor x_src = torch::stable::contiguous(x_src_in);
  const Tensor x_dst = torch::stable::contiguous(x_dst_in);
  const Tensor edge = torch::stable::contiguous(edge_in);
  const Tensor src = torch::stable::contiguous(src_in), dst = torch::stable::contiguous(dst_in);
  const int64_t batch = x_src.size(0), n = x_src.size(1), n_edges = edge.size(1),
                c = x_src.size(2);
  check_indices(src, n, "src");
  check_indices(dst, n, "dst");
  Tensor msg = torch::stable::new_empty(edge, {batch, n_edges, c});
  Tensor to_dst = torch::stable::new_zeros(x_src, {batch, n, c});
  Tensor to_src = torch::stable::new_zeros(x_src, {batch, n, c});
  if (batch == 0 || n_edges == 0 || c == 0) return {msg, to_dst, to_src};
  const std::vector<Task> tasks = split_tasks(batch, c);
  // recorded per task and raised after the parallel region: an exception thrown on one of
  // torch's threads would cross the stable C ABI (docs/stable_abi.md)
  std::vector<char> finite(tasks.size(), 1);
  dispatch_real(x_src.scalar_type(), "edge_message_aggregate_cpu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *xs = x_src.const_data_ptr<T>(), *xd = x_dst.const_data_ptr<T>(),
            *e = edge.const_data_ptr<T>();
    T *m = msg.mutable_data_ptr<T>(), *td = to_dst.mutable_data_ptr<T>(),
      *ts = to_src.mutable_data_ptr<T>();
    const int64_t *sp = src.const_data_ptr<int64_t>(), *dp = dst.const_data_ptr<int64_t>();
    parallel_dynamic(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
      const Task& task = tasks[t];
      const int64_t nb = task.b * n * c, eb = task.b * n_edges * c;
      finite[t] = forward_task<T>(xs + nb, xd + nb, e + eb, sp, dp, n_edges, c, task.c0,
                                  task.c1, m + eb, td + nb, ts + nb);
    });
  });
  for (size_t t = 0; t < tasks.size(); ++t)
    DA_CHECK(finite[t], "edge_message_aggregate: x_src, x_dst or edge of network ", tasks[t].b,
             " holds NaN or inf (on an edge it reads)");
  return {msg, to_dst, to_src};
}

std::tuple<Tensor, Tensor, Tensor> edge_message_aggregate_backward_cpu(
    const Tensor& grad_msg_in, const Tensor& grad_to_dst_in, const Tensor& grad_to_src_in,
    const Tensor& x_src_in, const Tensor& x_dst_in, const Tensor& edge_in, const Tensor& src_in,
    const Tensor& dst_in) {
  check_inputs(x_src_in, x_dst_in, edge_in, src_in, dst_in);
  DA_CHECK(same_shape(grad_msg_in, edge_in), "grad_msg must have edge's shape ", shape(edge_in),
           ", got ", shape(grad_msg_in));
  DA_CHECK(same_shape(grad_to_dst_in, x_src_in) && same_shape(grad_to_src_in, x_src_in),
           "grad_to_dst and grad_to_src must have x_src's shape ", shape(x_src_in), ", got ",
           shape(grad_to_dst_in), " and ", shape(grad_to_src_in));
  DA_CHECK_SAME_DTYPE(grad_msg_in, x_src_in, "grad_msg", "x_src");
  DA_CHECK_SAME_DTYPE(grad_to_dst_in, x_src_in, "grad_to_dst", "x_src");
  DA_CHECK_SAME_DTYPE(grad_to_src_in, x_src_in, "grad_to_src", "x_src");
  const Tensor gm = torch::stable::contiguous(grad_msg_in);
  const Tensor gtd = torch::stable::contiguous(grad_to_dst_in);
  const Tensor gts = torch::stable::contiguous(grad_to_src_in);
  const Tensor x_src = torch::stable::contiguous(x_src_in);
  const Tensor x_dst = torch::stable::contiguous(x_dst_in);
  const Tensor edge = torch::stable::contiguous(edge_in);
  const Tensor src = torch::stable::contiguous(src_in), dst = torch::stable::contiguous(dst_in);
  const int64_t batch = x_src.size(0), n = x_src.size(1), n_edges = edge.size(1),
                c = x_src.size(2);
  check_indices(src, n, "src");
  check_indices(dst, n, "dst");
  Tensor g_edge = torch::stable::new_empty(edge, {batch, n_edges, c});
  Tensor g_src = torch::stable::new_zeros(x_src, {batch, n, c});
  Tensor g_dst = torch::stable::new_zeros(x_src, {batch, n, c});
  if (batch == 0 || n_edges == 0 || c == 0) return {g_src, g_dst, g_edge};
  const std::vector<Task> tasks = split_tasks(batch, c);
  dispatch_real(x_src.scalar_type(), "edge_message_aggregate_backward_cpu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *gmp = gm.const_data_ptr<T>(), *gtdp = gtd.const_data_ptr<T>(),
            *gtsp = gts.const_data_ptr<T>(), *xs = x_src.const_data_ptr<T>(),
            *xd = x_dst.const_data_ptr<T>(), *e = edge.const_data_ptr<T>();
    T *ge = g_edge.mutable_data_ptr<T>(), *gs = g_src.mutable_data_ptr<T>(),
      *gd = g_dst.mutable_data_ptr<T>();
    const int64_t *sp = src.const_data_ptr<int64_t>(), *dp = dst.const_data_ptr<int64_t>();
    parallel_dynamic(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
      const Task& task = tasks[t];
      const int64_t nb = task.b * n * c, eb = task.b * n_edges * c;
      backward_task<T>(gmp + eb, gtdp + nb, gtsp + nb, xs + nb, xd + nb, e + eb, sp, dp, n_edges,
                       c, task.c0, task.c1, ge + eb, gs + nb, gd + nb);
    });
  });
  return {g_src, g_dst, g_edge};
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("edge_message_aggregate", TORCH_BOX(&edge_message_aggregate_cpu));
  m.impl("_edge_message_aggregate_backward", TORCH_BOX(&edge_message_aggregate_backward_cpu));
}

}  // namespace deepalign::cpu
