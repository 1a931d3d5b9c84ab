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
#include "cpu/simd.h"

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
// Explicit vectors (simd.h) with target clones: the select and the two scattered adds must not
// fall back to scalar branches, which cost 10x on random signs.
template <typename T>
DA_SIMD_CLONES bool forward_task(const T* xs, const T* xd, const T* e, const int64_t* src,
                                 const int64_t* dst, int64_t n_edges, int64_t c, int64_t c0,
                                 int64_t c1, T* msg, T* to_dst, T* to_src) {
  // v * 0 is 0 for a finite v and NaN otherwise: one running probe catches any NaN or inf
  // read, at the cost of a multiply-add per vector
  Vec<T> probe = splat<T>(0);
  for (int64_t k = 0; k < n_edges; ++k) {
    const T* a = xs + src[k] * c + c0;
    const T* d = xd + dst[k] * c + c0;
    const T* ek = e + k * c + c0;
    T* out = msg + k * c + c0;
    T* td = to_dst + dst[k] * c + c0;
    T* ts = to_src + src[k] * c + c0;
    for_chunks<T>(c1 - c0, [&](int64_t j, auto count) DA_LAMBDA_INLINE {
      const Vec<T> pre = load_partial(a + j, count, T(0)) + load_partial(d + j, count, T(0)) +
                         load_partial(ek + j, count, T(0));
      probe += pre * T(0);
      const Vec<T> v = pre > T(0) ? pre : splat<T>(0);
      store_partial(out + j, v, count);
      store_partial(td + j, load_partial(td + j, count, T(0)) + v, count);
      store_partial(ts + j, load_partial(ts + j, count, T(0)) + v, count);
    });
  }
  bool finite = true;
  for (int l = 0; l < Simd<T>::kLanes; ++l) finite &= probe[l] == T(0);
  return finite;
}

// The backward of one task: g = (grad_msg + grad_to_dst[dst] + grad_to_src[src]) * (pre > 0),
// grad_edge = g, and g scattered to both nodes of its edge. The mask is a select, not a
// multiply: a NaN upstream gradient on a dead edge stays out, as in torch.relu's backward.
template <typename T>
DA_SIMD_CLONES void backward_task(const T* gm, const T* gtd, const T* gts, const T* xs,
                                  const T* xd, const T* e, const int64_t* src, const int64_t* dst,
                                  int64_t n_edges, int64_t c, int64_t c0, int64_t c1, T* g_edge,
                                  T* g_src, T* g_dst) {
  for (int64_t k = 0; k < n_edges; ++k) {
    const int64_t s = src[k] * c + c0, d = dst[k] * c + c0, o = k * c + c0;
    for_chunks<T>(c1 - c0, [&](int64_t j, auto count) DA_LAMBDA_INLINE {
      const Vec<T> pre = load_partial(xs + s + j, count, T(0)) +
                         load_partial(xd + d + j, count, T(0)) +
                         load_partial(e + o + j, count, T(0));
      const Vec<T> up = load_partial(gm + o + j, count, T(0)) +
                        load_partial(gtd + d + j, count, T(0)) +
                        load_partial(gts + s + j, count, T(0));
      const Vec<T> g = pre > T(0) ? up : splat<T>(0);
      store_partial(g_edge + o + j, g, count);
      store_partial(g_src + s + j, load_partial(g_src + s + j, count, T(0)) + g, count);
      store_partial(g_dst + d + j, load_partial(g_dst + d + j, count, T(0)) + g, count);
    });
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
