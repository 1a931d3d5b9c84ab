// CPU kernel of deepalign::linear_relu_pool: an eval-mode weight-space layer's entry term,
//   y[b, i, j] = relu(w[b, i, j] @ weight + row_bias[b, i] + col_bias[b, j]),
// with y's pools over each row and over each column, in one pass.
//
// ATen spends six entry-sized passes on this (the matmul, two broadcast adds, the ReLU, then
// the next layer reads y twice to pool it), each a trip through memory for an entry that has
// only c_out values. Here each entry is computed in registers, written once (or not at all,
// when only its pools are used: the encoder's readout) and pooled on the spot.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace deepalign::cpu {
namespace {

// Entries computed together: their V * kEntries accumulators hide the FMA latency and share
// each load of the weight's rows.
constexpr int kEntries = 4;

// Vectors of channels per block: everything live in the inner loop (kEntries * V accumulators,
// V of the weight's row, V of the row bias and of the row pool, one broadcast input) must fit
// the vector registers, or every FMA spills: 4 * 4 + 3 * 4 + 1 = 29 of AVX-512's 32, and
// 4 * 2 + 3 * 2 + 1 = 15 of AVX2's 16 (on an AVX-512 Xeon, blocks of 2 vectors took 1.25 ms
// against 1.00 ms for bench_ops.py's (2, 128, 128, 32) -> 32 case).
int block_vectors() {
  return wide_vector_registers() ? 4 : 2;
}

template <typename T>
DA_INLINE Vec<T> relu(Vec<T> y) {
  return y < T(0) ? splat<T>(0) : y;  // NaN stays NaN, as in torch.relu
}

// Max that keeps a NaN once it has seen one (as torch.amax).
template <typename T>
DA_INLINE Vec<T> max_nan(Vec<T> best, Vec<T> y) {
  return (y > best) | (y != y) ? y : best;
}

template <typename T>
struct Block {
  const T* w;         // one matrix (n, m, c_in)
  const T* weight;    // (c_in, padded) zero-padded to whole vectors, at the block's first channel
  const T* row_bias;  // (n, c_out), at the block's first channel
  const T* col_bias;  // (m, c_out), likewise
  T* out;             // (n, m, c_out) or nullptr, at the block's first channel
  T* row_pool;        // (n, c_out), likewise
  T* col_acc;         // (m, padded): running column pools, at the block's first channel
  int64_t n, m, c_in, c_out, padded;
  int64_t lanes;      // channels of this block in its last vector (1..kLanes)
  bool mean;
};

// Entries (i, j0) .. (i, j0 + J - 1), J = kEntries or 1 (the row's remainder), for a block
// of V vectors of channels.
template <typename T, int V, int J>
DA_INLINE void entries(const Block<T>& k, int64_t i, int64_t j0, const Vec<T> (&row)[V],
                       Vec<T> (&row_acc)[V]) {
  constexpr int64_t L = Simd<T>::kLanes;
  const auto count = [&](int v) { return v == V - 1 ? k.lanes : L; };
  Vec<T> acc[J][V];
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v)
      acc[j][v] = row[v] + load_partial(k.col_bias + (j0 + j) * k.c_out + v * L, count(v), T(0));
  const T* x = k.w + (i * k.m + j0) * k.c_in;
  for (int64_t c = 0; c < k.c_in; ++c) {
    Vec<T> wc[V];
    for (int v = 0; v < V; ++v) wc[v] = load(k.weight + c * k.padded + v * L);
    for (int j = 0; j < J; ++j) {
      const Vec<T> xs = splat(x[j * k.c_in + c]);
      for (int v = 0; v < V; ++v) acc[j][v] += xs * wc[v];
    }
  }
  for (int j = 0; j < J; ++j) {
    T* col = k.col_acc + (j0 + j) * k.padded;
    for (int v = 0; v < V; ++v) {
      const Vec<T> y = relu<T>(acc[j][v]);
      if (k.out) store_partial(k.out + ((i * k.m + j0 + j) * k.c_out + v * L), y, count(v));
      const Vec<T> seen = load(col + v * L);
      row_acc[v] = k.mean ? row_acc[v] + y : max_nan<T>(row_acc[v], y);
      store(col + v * L, k.mean ? seen + y : max_nan<T>(seen, y));
    }
  }
}

// One matrix, channels [block start, + V vectors): every row, then the column pools.
template <typename T, int V>
DA_SIMD_CLONES void block_pass(const Block<T>& k) {
  constexpr int64_t L = Simd<T>::kLanes;
  const T init = k.mean ? T(0) : -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < k.m; ++j)
    std::fill(k.col_acc + j * k.padded, k.col_acc + j * k.padded + V * L, init);
  for (int64_t i = 0; i < k.n; ++i) {
    Vec<T> row[V], row_acc[V];
    for (int v = 0; v < V; ++v) {
      row[v] = load_partial(k.row_bias + i * k.c_out + v * L, v == V - 1 ? k.lanes : L, T(0));
      row_acc[v] = splat(init);
    }
    int64_t j = 0;
    for (; j + kEntries <= k.m; j += kEntries) entries<T, V, kEntries>(k, i, j, row, row_acc);
    for (; j < k.m; ++j) entries<T, V, 1>(k, i, j, row, row_acc);
    for (int v = 0; v < V; ++v) {
      const Vec<T> pooled = k.mean ? row_acc[v] / T(k.m) : row_acc[v];
      store_partial(k.row_pool + i * k.c_out + v * L, pooled, v == V - 1 ? k.lanes : L);
    }
  }
}

void check_inputs(const Tensor& w, const Tensor& weight, const Tensor& row_bias,
                  const Tensor& col_bias, const std::string& reduction) {
  DA_CHECK_DIM(w, 4, "w", "(B, n, m, c_in)");
  DA_CHECK_REAL(w, "w");
  DA_CHECK_DIM(weight, 2, "weight", "(c_in, c_out)");
  DA_CHECK_DIM(row_bias, 3, "row_bias", "(B, n, c_out)");
  DA_CHECK_DIM(col_bias, 3, "col_bias", "(B, m, c_out)");
  DA_CHECK_SAME_DTYPE(w, weight, "w", "weight");
  DA_CHECK_SAME_DTYPE(w, row_bias, "w", "row_bias");
  DA_CHECK_SAME_DTYPE(w, col_bias, "w", "col_bias");
  const int64_t batch = w.size(0), n = w.size(1), m = w.size(2), c_out = weight.size(1);
  DA_CHECK(n > 0 && m > 0, "w must have n > 0 rows and m > 0 columns, got shape ", shape(w));
  DA_CHECK(weight.size(0) == w.size(3), "weight must be (c_in, c_out) with c_in = ", w.size(3),
           " (w's channels), got shape ", shape(weight));
  DA_CHECK(c_out > 0, "weight must have c_out > 0 columns, got shape ", shape(weight));
  DA_CHECK(has_shape(row_bias, {batch, n, c_out}),
           "row_bias must be (B, n, c_out) = (", batch, ", ", n, ", ", c_out, "), got shape ",
           shape(row_bias));
  DA_CHECK(has_shape(col_bias, {batch, m, c_out}),
           "col_bias must be (B, m, c_out) = (", batch, ", ", m, ", ", c_out, "), got shape ",
           shape(col_bias));
  DA_CHECK(reduction == "mean" || reduction == "max",
           "reduction must be 'mean' or 'max', got '", reduction, "'");
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> linear_relu_pool_cpu(
    const Tensor& w_in, const Tensor& weight_in, const Tensor& row_bias_in,
    const Tensor& col_bias_in, const std::string& reduction, bool keep_output) {
  check_inputs(w_in, weight_in, row_bias_in, col_bias_in, reduction);
  const Tensor w = torch::stable::contiguous(w_in);
  const Tensor row_bias = torch::stable::contiguous(row_bias_in);
  const Tensor col_bias = torch::stable::contiguous(col_bias_in);
  const int64_t batch = w.size(0), n = w.size(1), m = w.size(2), c_in = w.size(3),
                c_out = weight_in.size(1);
  Tensor out = keep_output ? torch::stable::new_empty(w, {batch, n, m, c_out})
                           : torch::stable::new_empty(w, {0});
  Tensor row_pool = torch::stable::new_empty(w, {batch, n, c_out});
  Tensor col_pool = torch::stable::new_empty(w, {batch, m, c_out});
  dispatch_real(w.scalar_type(), "linear_relu_pool_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    constexpr int64_t L = Simd<scalar_t>::kLanes;
    const int64_t padded = (c_out + L - 1) / L * L;
    // the weight, zero-padded to whole vectors: the inner loop loads its rows unmasked
    Tensor weight = torch::stable::new_zeros(w, {c_in, padded});
    Tensor used = torch::stable::narrow(weight, 1, 0, c_out);
    torch::stable::copy_(used, weight_in);
    const bool mean = reduction == "mean";
    const scalar_t *wp = w.const_data_ptr<scalar_t>(), *wt = weight.const_data_ptr<scalar_t>();
    const scalar_t *rb = row_bias.const_data_ptr<scalar_t>(),
                   *cb = col_bias.const_data_ptr<scalar_t>();
    scalar_t* op = keep_output ? out.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* rp = row_pool.mutable_data_ptr<scalar_t>();
    scalar_t* cpool = col_pool.mutable_data_ptr<scalar_t>();
    const int64_t vectors = block_vectors();
    parallel_dynamic(
        batch, [&] { return std::vector<scalar_t>(m * padded); },
        [&](std::vector<scalar_t>& col_acc, int64_t b) {
          // channel blocks of block_vectors() vectors (fewer for the last one)
          for (int64_t start = 0; start < c_out; start += vectors * L) {
            const int64_t width = std::min(c_out - start, vectors * L);
            Block<scalar_t> k{wp + b * n * m * c_in,
                              wt + start,
                              rb + b * n * c_out + start,
                              cb + b * m * c_out + start,
                              keep_output ? op + b * n * m * c_out + start : nullptr,
                              rp + b * n * c_out + start,
                              col_acc.data() + start, n, m, c_in, c_out, padded,
                              (width - 1) % L + 1, mean};
            switch ((width + L - 1) / L) {
              case 4: block_pass<scalar_t, 4>(k); break;
              case 3: block_pass<scalar_t, 3>(k); break;
              case 2: block_pass<scalar_t, 2>(k); break;
              default: block_pass<scalar_t, 1>(k);
            }
            scalar_t* cp = cpool + b * m * c_out;
            for (int64_t j = 0; j < m; ++j)
              for (int64_t c = start; c < start + width; ++c)
                cp[j * c_out + c] = mean ? col_acc[j * padded + c] / scalar_t(n)
                                         : col_acc[j * padded + c];
          }
        });
  });
  return {out, row_pool, col_pool};
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("linear_relu_pool", TORCH_BOX(&linear_relu_pool_cpu));
}

}  // namespace deepalign::cpu
