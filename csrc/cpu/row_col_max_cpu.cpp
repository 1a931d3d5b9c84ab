// CPU kernels of deepalign::row_col_max and its backward: the max of a batch of matrices with
// channels (B, n, m, c) over each row and over each column, with the indices.
//
// The weight-space encoder max-pools every weight tensor both ways. ATen needs two passes over
// the tensor forward (amax twice; max(dim) with indices is many times slower on a middle axis)
// and, backward, entry-sized compare masks for each pool. Here one pass reads each entry once
// and updates both pools; the backward is a zero fill and one scattered write per pooled value.
// Ties go to the first index and NaN propagates, as in torch.max.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace deepalign::cpu {
namespace {

// Running arg-maxima are kept as acc_t, beside the maxima: one compare mask selects both, and
// every index below 2^24 is exact in float.
constexpr int64_t kMaxExtent = int64_t{1} << 24;

// Lanes of acc_t widened from scalar_t at p (count of them; -inf past count, which never wins).
template <typename acc_t, typename scalar_t>
DA_INLINE Vec<acc_t> load_widened(const scalar_t* p, int64_t count) {
  constexpr acc_t kLow = -std::numeric_limits<acc_t>::infinity();
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return load_partial(p, count, kLow);
  } else if constexpr (std::is_same_v<scalar_t, torch::headeronly::BFloat16>) {
    // a bfloat16 is the top half of a float: widen by a 16-bit shift
    typedef uint16_t Half16 __attribute__((vector_size(2 * Simd<float>::kLanes)));
    Half16 bits = Half16{} + uint16_t{0xFF80};  // bfloat16 -inf
    std::memcpy(&bits, p, sizeof(uint16_t) * count);
    const auto wide = __builtin_convertvector(bits, typename Simd<float>::I) << 16;
    Vec<float> v;
    std::memcpy(&v, &wide, sizeof(v));
    return v;
  } else {  // float16: widened one value at a time (no portable vector conversion)
    Vec<acc_t> v = splat(kLow);
    for (int64_t k = 0; k < count; ++k) v[k] = static_cast<acc_t>(p[k]);
    return v;
  }
}

// One matrix (n, m, c): both pools in one pass, vectorised over the channels. Lanes hold the
// running row max of the current row and the running column max of column j. The comparison is
// a plain v > best; it returns whether it saw a NaN, and the caller then redoes the matrix with
// the scalar NaN-aware one (a NaN wins and stays) rather than slowing every entry down.
template <typename scalar_t, typename acc_t>
DA_SIMD_CLONES bool row_col_max_fast(const scalar_t* w, int64_t n, int64_t m, int64_t c,
                                     scalar_t* rows, scalar_t* cols, int64_t* row_idx,
                                     int64_t* col_idx, acc_t* col_best, acc_t* col_arg,
                                     acc_t* row_best, acc_t* row_arg) {
  using Lanes = typename Simd<acc_t>::I;
  constexpr acc_t kLow = -std::numeric_limits<acc_t>::infinity();
  std::fill(col_best, col_best + m * c, kLow);
  std::fill(col_arg, col_arg + m * c, 0);
  Lanes nan{};
  for (int64_t i = 0; i < n; ++i) {
    std::fill(row_best, row_best + c, kLow);
    std::fill(row_arg, row_arg + c, 0);
    for (int64_t j = 0; j < m; ++j) {
      const scalar_t* x = w + (i * m + j) * c;
      acc_t* cb = col_best + j * c;
      acc_t* ca = col_arg + j * c;
      for_chunks<acc_t>(c, [&](int64_t k, auto count) DA_LAMBDA_INLINE {
        const Vec<acc_t> v = load_widened<acc_t>(x + k, count);
        const Vec<acc_t> rb = load_partial(row_best + k, count, kLow);
        const Vec<acc_t> cbv = load_partial(cb + k, count, kLow);
        const Vec<acc_t> ra = load_partial(row_arg + k, count, acc_t{0});
        const Vec<acc_t> cav = load_partial(ca + k, count, acc_t{0});
        const Lanes to_row = v > rb, to_col = v > cbv;
        nan |= v != v;
        store_partial(row_best + k, to_row ? v : rb, count);
        store_partial(row_arg + k, to_row ? splat(acc_t(j)) : ra, count);
        store_partial(cb + k, to_col ? v : cbv, count);
        store_partial(ca + k, to_col ? splat(acc_t(i)) : cav, count);
      });
    }
    for (int64_t k = 0; k < c; ++k) {
      rows[i * c + k] = static_cast<scalar_t>(row_best[k]);
      row_idx[i * c + k] = static_cast<int64_t>(row_arg[k]);
    }
  }
  for (int64_t k = 0; k < m * c; ++k) {
    cols[k] = static_cast<scalar_t>(col_best[k]);
    col_idx[k] = static_cast<int64_t>(col_arg[k]);
  }
  bool any = false;
  for (int64_t l = 0; l < Simd<acc_t>::kLanes; ++l) any |= nan[l] != 0;
  return any;
}

// The same with NaN propagating, one value at a time: only for matrices that hold a NaN.
template <typename scalar_t, typename acc_t>
void row_col_max_nan(const scalar_t* w, int64_t n, int64_t m, int64_t c, scalar_t* rows,
                     scalar_t* cols, int64_t* row_idx, int64_t* col_idx) {
  // max and first argmax of count values stride apart, NaN winning
  const auto reduce = [](const scalar_t* x, int64_t count, int64_t stride, scalar_t* out,
                         int64_t* arg_out) {
    acc_t best = static_cast<acc_t>(x[0]);
    int64_t arg = 0;
    for (int64_t t = 1; t < count; ++t) {
      const acc_t v = static_cast<acc_t>(x[t * stride]);
      if (v > best || (v != v && best == best)) best = v, arg = t;
    }
    *out = static_cast<scalar_t>(best);
    *arg_out = arg;
  };
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < c; ++k)
      reduce(w + i * m * c + k, m, c, rows + i * c + k, row_idx + i * c + k);
  for (int64_t j = 0; j < m; ++j)
    for (int64_t k = 0; k < c; ++k)
      reduce(w + j * c + k, n, m * c, cols + j * c + k, col_idx + j * c + k);
}

void check_weights(const Tensor& w) {
  DA_CHECK_DIM(w, 4, "w", "(B, n, m, c)");
  DA_CHECK_FLOAT(w, "w");
  DA_CHECK(w.size(1) > 0 && w.size(2) > 0, "w must have n > 0 rows and m > 0 columns, got shape ",
           shape(w));
  DA_CHECK(w.size(1) <= kMaxExtent && w.size(2) <= kMaxExtent,
           "w must have at most 2^24 rows and columns, got shape ", shape(w));
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> row_col_max_cpu(const Tensor& w_in) {
  check_weights(w_in);
  const Tensor w = torch::stable::contiguous(w_in);
  const int64_t batch = w.size(0), n = w.size(1), m = w.size(2), c = w.size(3);
  Tensor rows = torch::stable::new_empty(w, {batch, n, c});
  Tensor cols = torch::stable::new_empty(w, {batch, m, c});
  Tensor row_idx = torch::stable::new_empty(w, {batch, n, c}, ScalarType::Long);
  Tensor col_idx = torch::stable::new_empty(w, {batch, m, c}, ScalarType::Long);
  dispatch_floating(w.scalar_type(), "row_col_max_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    // 16-bit types compare in float: exact, each of their values is a float
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    struct Scratch {
      std::vector<acc_t> col_best, row_best;
      std::vector<acc_t> col_arg, row_arg;
    };
    parallel_dynamic(
        batch,
        [&] {
          return Scratch{std::vector<acc_t>(m * c), std::vector<acc_t>(c),
                         std::vector<acc_t>(m * c), std::vector<acc_t>(c)};
        },
        [&, w0 = w.const_data_ptr<scalar_t>(), rows0 = rows.mutable_data_ptr<scalar_t>(),
         cols0 = cols.mutable_data_ptr<scalar_t>(), ri0 = row_idx.mutable_data_ptr<int64_t>(),
         ci0 = col_idx.mutable_data_ptr<int64_t>()](Scratch& s, int64_t b) {
          const scalar_t* wb = w0 + b * n * m * c;
          scalar_t* rb = rows0 + b * n * c;
          scalar_t* cb = cols0 + b * m * c;
          int64_t* ri = ri0 + b * n * c;
          int64_t* ci = ci0 + b * m * c;
          if (row_col_max_fast<scalar_t, acc_t>(wb, n, m, c, rb, cb, ri, ci, s.col_best.data(),
                                                s.col_arg.data(), s.row_best.data(),
                                                s.row_arg.data()))
            row_col_max_nan<scalar_t, acc_t>(wb, n, m, c, rb, cb, ri, ci);
        });
  });
  return {rows, cols, row_idx, col_idx};
}

Tensor row_col_max_backward_cpu(const Tensor& grad_rows_in, const Tensor& grad_cols_in,
                                const Tensor& row_idx_in, const Tensor& col_idx_in) {
  DA_CHECK_DIM(grad_rows_in, 3, "grad_rows", "(B, n, c)");
  DA_CHECK_DIM(grad_cols_in, 3, "grad_cols", "(B, m, c)");
  DA_CHECK_FLOAT(grad_rows_in, "grad_rows");
  DA_CHECK_SAME_DTYPE(grad_rows_in, grad_cols_in, "grad_rows", "grad_cols");
  DA_CHECK(row_idx_in.scalar_type() == ScalarType::Long &&
               col_idx_in.scalar_type() == ScalarType::Long,
           "row_idx and col_idx must be int64, got ", dtype_name(row_idx_in), " and ",
           dtype_name(col_idx_in));
  DA_CHECK(same_shape(row_idx_in, grad_rows_in), "row_idx must have grad_rows' shape ",
           shape(grad_rows_in), ", got ", shape(row_idx_in));
  DA_CHECK(same_shape(col_idx_in, grad_cols_in), "col_idx must have grad_cols' shape ",
           shape(grad_cols_in), ", got ", shape(col_idx_in));
  DA_CHECK(grad_rows_in.size(0) == grad_cols_in.size(0) &&
               grad_rows_in.size(2) == grad_cols_in.size(2),
           "grad_rows (B, n, c) and grad_cols (B, m, c) must agree on B and c, got ",
           shape(grad_rows_in), " and ", shape(grad_cols_in));
  const Tensor g_rows = torch::stable::contiguous(grad_rows_in);
  const Tensor g_cols = torch::stable::contiguous(grad_cols_in);
  const Tensor r_idx = torch::stable::contiguous(row_idx_in);
  const Tensor c_idx = torch::stable::contiguous(col_idx_in);
  const int64_t batch = g_rows.size(0), n = g_rows.size(1), m = g_cols.size(1),
                c = g_rows.size(2);
  Tensor grad = torch::stable::new_zeros(g_rows, {batch, n, m, c});
  // An index out of range is recorded per matrix and raised after the parallel region: an
  // exception thrown on one of torch's threads would cross the stable C ABI (torch_parallel_for).
  std::vector<std::string> errors(batch);
  dispatch_floating(g_rows.scalar_type(), "row_col_max_backward_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    scalar_t* out0 = grad.mutable_data_ptr<scalar_t>();
    const scalar_t* gr0 = g_rows.const_data_ptr<scalar_t>();
    const scalar_t* gc0 = g_cols.const_data_ptr<scalar_t>();
    const int64_t *ri0 = r_idx.const_data_ptr<int64_t>(), *ci0 = c_idx.const_data_ptr<int64_t>();
    parallel_dynamic(batch, [&](int64_t b) {
      scalar_t* out = out0 + b * n * m * c;
      const scalar_t* gr = gr0 + b * n * c;
      const scalar_t* gc = gc0 + b * m * c;
      const int64_t* ri = ri0 + b * n * c;
      const int64_t* ci = ci0 + b * m * c;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t k = 0; k < c; ++k) {
          const int64_t j = ri[i * c + k];
          if (j < 0 || j >= m) {
            errors[b] = message("row_idx holds ", j, ", outside [0, ", m, ")");
            return;
          }
          out[(i * m + j) * c + k] += gr[i * c + k];
        }
      }
      for (int64_t j = 0; j < m; ++j) {
        for (int64_t k = 0; k < c; ++k) {
          const int64_t i = ci[j * c + k];
          if (i < 0 || i >= n) {
            errors[b] = message("col_idx holds ", i, ", outside [0, ", n, ")");
            return;
          }
          out[(i * m + j) * c + k] += gc[j * c + k];
        }
      }
    });
  });
  for (const std::string& error : errors) DA_CHECK(error.empty(), error);
  return grad;
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("row_col_max", TORCH_BOX(&row_col_max_cpu));
  m.impl("_row_col_max_backward", TORCH_BOX(&row_col_max_backward_cpu));
}

}  // namespace deepalign::cpu
