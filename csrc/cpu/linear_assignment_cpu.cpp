// CPU kernel of deepalign::linear_assignment: exact batched rectangular linear assignment.
//
// Shortest augmenting paths (Jonker-Volgenant, in Crouse's form as in scipy's
// linear_sum_assignment, IEEE TAES 52(4), 2016) with a row-reduction warm start:
//   u_i = min_j c_ij, v = 0 are feasible duals (reduced costs c_ij - u_i - v_j >= 0, v <= 0 as the
//   rectangular dual needs), and every row whose argmin column is still free is matched on that
//   tight edge. If all rows get matched (the row-argmin is injective) that is already optimal;
//   otherwise Dijkstra runs only from the unmatched rows. Augmenting paths may reroute seeded
//   rows, so the result is exactly optimal. Costs are solved in float64; one problem per task.
// Each Dijkstra step is one branch-free vector pass over all columns (relax_row), which beats
// scipy's scalar scan of the remaining columns even though it also touches visited ones.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu/assignment_cpu.h"
#include "cpu/simd.h"

namespace deepalign::cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kLanes = Simd<double>::kLanes;

enum class Status : char { kOk, kNaN, kWrongInf, kInfeasible };

using Lanes = Simd<double>::I;

// The least of the per-lane minima (best, at columns best_j), lowest column on ties; -1 if none is
// below +inf.
DA_INLINE int64_t lane_argmin(Vec<double> best, Lanes best_j, double* lowest) {
  int64_t arg = -1;
  double low = kInf;
  for (int64_t l = 0; l < kLanes; ++l)
    if (best[l] < low || (best[l] == low && arg >= 0 && best_j[l] < arg)) {
      low = best[l];
      arg = best_j[l];
    }
  *lowest = low;
  return arg;
}

DA_INLINE Lanes iota() {
  Lanes v{};
  for (int64_t l = 0; l < kLanes; ++l) v[l] = l;
  return v;
}

// Converts one problem to float64 costs to minimise, each row padded with +inf to m_pad columns.
template <typename T>
DA_SIMD_CLONES Status load_costs(const T* cost, double* c, int64_t n, int64_t m, int64_t m_pad,
                                 double sign) {
  int64_t nan = 0, wrong_inf = 0;  // counted, not branched on, so that the loop vectorises
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      const double x = sign * double(cost[i * m + j]);
      nan += x != x;
      wrong_inf += x == -kInf;
      c[i * m_pad + j] = x;
    }
    for (int64_t j = m; j < m_pad; ++j) c[i * m_pad + j] = kInf;
  }
  return nan ? Status::kNaN : wrong_inf ? Status::kWrongInf : Status::kOk;
}

// The column of the least entry of a padded row (lowest on ties), its value in *lowest.
DA_SIMD_CLONES int64_t row_argmin(const double* ci, int64_t m_pad, double* lowest) {
  Vec<double> best = splat(kInf);
  Lanes best_j{}, j_vec = iota();
  for (int64_t j = 0; j < m_pad; j += kLanes, j_vec += kLanes) {
    const Vec<double> x = load(ci + j);
    const Lanes better = x < best;
    best = better ? x : best;
    best_j = better ? j_vec : best_j;
  }
  return lane_argmin(best, best_j, lowest);
}

// One Dijkstra step from row i over the padded columns [0, m_pad): relaxes
// dist[j] = min(dist[j], base + c_ij - v_j) (recording path[j] = i) and returns the column of least
// dist, lowest index on ties, with that dist in *lowest. Visited (and padding) columns hold
// dist = NaN, which no comparison selects, so the scan needs no mask array.
DA_SIMD_CLONES int64_t relax_row(const double* ci, const double* v, double* dist, int64_t* path,
                                 int64_t m_pad, double base, int64_t i, double* lowest) {
  Vec<double> best = splat(kInf);
  Lanes best_j{}, j_vec = iota(), i_vec = Lanes{} + i;
  for (int64_t j = 0; j < m_pad; j += kLanes, j_vec += kLanes) {
    Vec<double> d = load(dist + j);
    const Vec<double> r = (load(ci + j) + base) - load(v + j);
    const Lanes shorter = r < d;
    d = shorter ? r : d;
    store(dist + j, d);
    Lanes p;
    std::memcpy(&p, path + j, sizeof(p));
    p = shorter ? i_vec : p;
    std::memcpy(path + j, &p, sizeof(p));
    const Lanes better = d < best;
    best = better ? d : best;
    best_j = better ? j_vec : best_j;
  }
  return lane_argmin(best, best_j, lowest);
}

// Solves one problem at a time; buffers are reused across the problems of a task. Columns are
// padded to a multiple of the vector width.
class Solver {
 public:
  template <typename T>
  Status solve(const T* cost, int64_t n, int64_t m, bool maximize, int64_t* cols) {
    n_ = n;
    m_ = m;
    m_pad_ = (m + kLanes - 1) / kLanes * kLanes;
    c_.resize(n * m_pad_);
    const Status status = load_costs(cost, c_.data(), n, m, m_pad_, maximize ? -1.0 : 1.0);
    if (status != Status::kOk) return status;
    u_.assign(n, 0.0);
    v_.assign(m_pad_, 0.0);
    col4row_.assign(n, -1);
    row4col_.assign(m, -1);
    dist_.resize(m_pad_);
    path_.resize(m_pad_);
    if (!warm_start()) return Status::kInfeasible;
    for (int64_t row = 0; row < n; ++row)
      if (col4row_[row] < 0 && !augment(row)) return Status::kInfeasible;
    std::copy(col4row_.begin(), col4row_.end(), cols);
    return Status::kOk;
  }

 private:
  // Row reduction and greedy matching on the tight edges; false if a row is all +inf.
  bool warm_start() {
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t best = row_argmin(c_.data() + i * m_pad_, m_pad_, &u_[i]);
      if (best < 0) return false;
      if (row4col_[best] < 0) {
        row4col_[best] = i;
        col4row_[i] = best;
      }
    }
    return true;
  }

  // One Dijkstra search from the free row `cur` over reduced costs, then the dual update and
  // the augmentation along the found path. False if no free column is reachable (infeasible).
  bool augment(int64_t cur) {
    std::fill(dist_.begin(), dist_.begin() + m_, kInf);
    std::fill(dist_.begin() + m_, dist_.end(), kNaN);
    seen_cols_.clear();
    seen_dist_.clear();
    double min_val = 0;
    int64_t i = cur, sink = -1;
    while (sink < 0) {
      double lowest;
      const int64_t j = relax_row(c_.data() + i * m_pad_, v_.data(), dist_.data(), path_.data(),
                                  m_pad_, min_val - u_[i], i, &lowest);
      if (lowest == kInf) return false;
      min_val = lowest;
      seen_cols_.push_back(j);
      seen_dist_.push_back(lowest);
      dist_[j] = kNaN;
      if (row4col_[j] < 0)
        sink = j;
      else
        i = row4col_[j];
    }
    // Dual update: each visited column j (and the row matched to it) moves by min_val - dist_j.
    u_[cur] += min_val;
    for (size_t k = 0; k < seen_cols_.size(); ++k) {
      const int64_t j = seen_cols_[k];
      const double delta = min_val - seen_dist_[k];
      v_[j] -= delta;
      if (j != sink) u_[row4col_[j]] += delta;
    }
    for (int64_t j = sink;;) {
      const int64_t r = path_[j];
      row4col_[j] = r;
      std::swap(col4row_[r], j);
      if (r == cur) break;
    }
    return true;
  }

  int64_t n_ = 0, m_ = 0, m_pad_ = 0;
  std::vector<double> c_, u_, v_, dist_, seen_dist_;
  std::vector<int64_t> path_, col4row_, row4col_, seen_cols_;
};

}  // namespace

at::Tensor linear_assignment_cpu_named(const at::Tensor& cost, bool maximize, const char* name) {
  check_assignment_input(cost, name);
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  const at::Tensor c = cost.contiguous();
  at::Tensor cols = at::empty({batch, n}, cost.options().dtype(at::kLong));
  if (batch == 0 || n == 0) return cols;
  std::vector<Status> status(batch, Status::kOk);
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "linear_assignment_cpu", [&] {
    const scalar_t* data = c.const_data_ptr<scalar_t>();
    int64_t* out = cols.data_ptr<int64_t>();
    at::parallel_for(0, batch, 1, [&](int64_t lo, int64_t hi) {
      Solver solver;
      for (int64_t b = lo; b < hi; ++b)
        status[b] = solver.solve(data + b * n * m, n, m, maximize, out + b * n);
    });
  });
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(status[b] != Status::kNaN, name, " must not contain NaN (matrix ", b,
                " of the batch does)");
    TORCH_CHECK(status[b] != Status::kWrongInf, name, " must not contain ",
                maximize ? "+inf with maximize=True (-inf marks a forbidden pair)"
                         : "-inf (+inf marks a forbidden pair)",
                "; matrix ", b, " of the batch does");
    TORCH_CHECK(status[b] != Status::kInfeasible, name, " matrix ", b,
                " of the batch has no feasible assignment: its allowed (finite) entries admit ",
                "no matching of every row to a distinct column");
  }
  return cols;
}

at::Tensor linear_assignment_cpu(const at::Tensor& cost, bool maximize) {
  return linear_assignment_cpu_named(cost, maximize, "cost");
}

TORCH_LIBRARY_IMPL(deepalign, CPU, m) { m.impl("linear_assignment", &linear_assignment_cpu); }

}  // namespace deepalign::cpu
