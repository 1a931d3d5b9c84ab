// CPU kernel of deepalign::linear_assignment: exact batched rectangular linear assignment.
//
// Two phases on the costs to minimise c (float64; the input is read in place, negated for
// maximize), with duals u (rows) and v (columns, v <= 0, and v = 0 on every column never
// matched, as the rectangular dual needs):
// 1. Augmenting row reduction (Jonker & Volgenant, Computing 38, 1987): a free row i takes the
//    column j1 of its least reduced cost c_ij - v_j and lowers v_j1 by the gap to its second
//    least, so that it is tight on both. A row it displaces from j1 is reduced next. Each matched
//    row stays tight on its column at its row minimum, so (u, v) stays feasible; v only falls, and
//    only on matched columns. This settles most rows of a near-permutation (and many of a random
//    problem) with one O(m) scan each; it is bounded by n extra scans, and displaced rows that
//    could not lower v (ties, a single finite entry) are left for phase 2.
// 2. Shortest augmenting paths (Crouse's form of Jonker-Volgenant, as scipy's
//    linear_sum_assignment, IEEE TAES 52(4), 2016) from each row still free. Augmenting paths may
//    reroute the matched rows, so the result is exactly optimal.
// Each scan is one branch-free vector pass over all columns, which beats scipy's scalar scan of
// the remaining columns even though it also touches visited ones. Problems are scheduled
// dynamically (cpu/parallel.h).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "stable_ops.h"
#include "cpu/assignment_cpu.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace deepalign::cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kLanes = Simd<double>::kLanes;

enum class Status : char { kOk, kNaN, kWrongInf, kInfeasible };

using Lanes = Simd<double>::I;

DA_INLINE Lanes iota() {
  Lanes v{};
  for (int64_t l = 0; l < kLanes; ++l) v[l] = l;
  return v;
}

// Columns [j, j + count) of a cost row as float64 costs to minimise (sign * x); lanes past the
// row end are +inf.
template <typename T>
DA_INLINE Vec<double> load_costs(const T* row, int64_t j, int64_t count, double sign) {
  return load_convert<double>(row + j, count, T(sign * kInf)) * sign;
}

// The least (value, column) of a few candidates, lowest column on ties; (+inf, -1) if none.
struct Least {
  double value = kInf;
  int64_t col = -1;
  DA_INLINE void offer(double x, int64_t j) {
    if (x < value || (x == value && j < col)) {
      value = x;
      col = j;
    }
  }
};

// The two least reduced costs c_ij - v_j of row i, in (value, column) order: *first and
// *second. A row with one finite entry has second = +inf. Also checks the row's values (NaN, or
// a -inf cost: +inf input with maximize), since it reads them all anyway.
template <typename T>
DA_SIMD_CLONES Status two_least(const T* row, const double* v, int64_t m, double sign,
                                Least* first, Least* second) {
  Vec<double> b1 = splat(kInf), b2 = splat(kInf);
  Lanes j1{}, j2{}, j_vec = iota(), nan{}, wrong_inf{};
  for_chunks<double>(m, [&](int64_t j, auto count) DA_LAMBDA_INLINE {
    const Vec<double> c = load_costs(row, j, count, sign);
    const Vec<double> h = c - load(v + j);
    nan |= h != h;  // v is finite, so only a NaN cost gives a NaN here
    wrong_inf |= c == -kInf;
    const Lanes lt1 = h < b1, lt2 = h < b2;
    b2 = lt1 ? b1 : lt2 ? h : b2;
    j2 = lt1 ? j1 : lt2 ? j_vec : j2;
    b1 = lt1 ? h : b1;
    j1 = lt1 ? j_vec : j1;
    j_vec += kLanes;
  });
  // Per lane, (b1, j1) and (b2, j2) are its two least in (value, column) order, so the overall
  // two least are among these candidates.
  *first = Least{};
  for (int64_t l = 0; l < kLanes; ++l) first->offer(b1[l], j1[l]);
  *second = Least{};
  for (int64_t l = 0; l < kLanes; ++l) {
    if (j1[l] != first->col) second->offer(b1[l], j1[l]);
    second->offer(b2[l], j2[l]);
  }
  int64_t any_nan = 0, any_wrong_inf = 0;
  for (int64_t l = 0; l < kLanes; ++l) {
    any_nan |= nan[l];
    any_wrong_inf |= wrong_inf[l];
  }
  return any_nan ? Status::kNaN : any_wrong_inf ? Status::kWrongInf : Status::kOk;
}

// One Dijkstra step from row i: relaxes dist[j] = min(dist[j], base + c_ij - v_j) (recording
// path[j] = i) over the columns, and returns the column of least dist, lowest index on ties,
// with that dist in *lowest. Visited (and padding) columns hold dist = NaN, which no comparison
// selects, so the scan needs no mask array.
template <typename T>
DA_SIMD_CLONES int64_t relax_row(const T* row, const double* v, double* dist, int64_t* path,
                                 int64_t m, double sign, double base, int64_t i, double* lowest) {
  Vec<double> best = splat(kInf);
  Lanes best_j{}, j_vec = iota(), i_vec = Lanes{} + i;
  for_chunks<double>(m, [&](int64_t j, auto count) DA_LAMBDA_INLINE {
    Vec<double> d = load(dist + j);
    const Vec<double> r = (load_costs(row, j, count, sign) + base) - load(v + j);
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
    j_vec += kLanes;
  });
  Least least;
  for (int64_t l = 0; l < kLanes; ++l) least.offer(best[l], best_j[l]);
  *lowest = least.value;
  return least.col;
}

// Solves one problem at a time; buffers (O(m) each) are reused across the problems of a thread.
// Column arrays are padded to a multiple of the vector width.
template <typename T>
class Solver {
 public:
  Status solve(const T* cost, int64_t n, int64_t m, bool maximize, int64_t* cols) {
    cost_ = cost;
    n_ = n;
    m_ = m;
    sign_ = maximize ? -1.0 : 1.0;
    const int64_t m_pad = (m + kLanes - 1) / kLanes * kLanes;
    u_.assign(n, 0.0);
    v_.assign(m_pad, 0.0);
    col4row_.assign(n, -1);
    row4col_.assign(m, -1);
    dist_.resize(m_pad);
    path_.resize(m_pad);
    free_.clear();
    const Status status = reduce_rows();
    if (status != Status::kOk) return status;
    for (int64_t row : free_)
      if (!augment(row)) return Status::kInfeasible;
    std::copy(col4row_.begin(), col4row_.end(), cols);
    return Status::kOk;
  }

 private:
  const T* row(int64_t i) const { return cost_ + i * m_; }

  // Phase 1 (see the top of the file); every row is scanned, so checked, at least once. Rows left
  // free go to free_.
  Status reduce_rows() {
    int64_t extra_scans = n_;
    Least a, b;
    for (int64_t first = 0; first < n_; ++first) {
      for (int64_t i = first; i >= 0;) {
        const Status status = two_least(row(i), v_.data(), m_, sign_, &a, &b);
        if (status != Status::kOk) return status;
        if (a.value == kInf) return infeasible_unless_bad(first + 1);
        const double gap = b.value - a.value;
        const bool lowered = gap > 0 && gap < kInf;
        int64_t j = a.col;
        if (lowered)
          v_[j] -= gap;
        else if (gap == 0 && row4col_[j] >= 0 && row4col_[b.col] < 0)
          j = b.col;  // a tie: prefer the free column
        u_[i] = lowered ? b.value : a.value;
        const int64_t displaced = row4col_[j];
        row4col_[j] = i;
        col4row_[i] = j;
        i = -1;
        if (displaced >= 0) {
          col4row_[displaced] = -1;
          if (lowered && extra_scans-- > 0)
            i = displaced;
          else
            free_.push_back(displaced);
        }
      }
    }
    return Status::kOk;
  }

  // A row has no allowed column: the problem is infeasible, unless rows [from, n) hold a bad
  // value, which is reported instead (as if the values had been checked first).
  Status infeasible_unless_bad(int64_t from) {
    Least a, b;
    for (int64_t i = from; i < n_; ++i) {
      const Status status = two_least(row(i), v_.data(), m_, sign_, &a, &b);
      if (status != Status::kOk) return status;
    }
    return Status::kInfeasible;
  }

  // Phase 2: one Dijkstra search from the free row `cur` over reduced costs, then the dual update
  // and the augmentation along the found path. False if no free column is reachable.
  bool augment(int64_t cur) {
    std::fill(dist_.begin(), dist_.begin() + m_, kInf);
    std::fill(dist_.begin() + m_, dist_.end(), kNaN);
    seen_cols_.clear();
    seen_dist_.clear();
    double min_val = 0;
    int64_t i = cur, sink = -1;
    while (sink < 0) {
      double lowest;
      const int64_t j = relax_row(row(i), v_.data(), dist_.data(), path_.data(), m_, sign_,
                                  min_val - u_[i], i, &lowest);
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

  const T* cost_ = nullptr;
  int64_t n_ = 0, m_ = 0;
  double sign_ = 1.0;
  std::vector<double> u_, v_, dist_, seen_dist_;
  std::vector<int64_t> path_, col4row_, row4col_, seen_cols_, free_;
};

}  // namespace

Tensor linear_assignment_cpu_named(const Tensor& cost, bool maximize, const char* name) {
  check_assignment_input(cost, name);
  const int64_t batch = cost.size(0), n = cost.size(1), m = cost.size(2);
  const Tensor c = torch::stable::contiguous(cost);
  Tensor cols = torch::stable::new_empty(cost, {batch, n}, ScalarType::Long);
  if (batch == 0 || n == 0) return cols;
  std::vector<Status> status(batch, Status::kOk);
  dispatch_real(c.scalar_type(), "linear_assignment_cpu", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* data = c.const_data_ptr<scalar_t>();
    int64_t* out = cols.mutable_data_ptr<int64_t>();
    parallel_dynamic(
        batch, [] { return Solver<scalar_t>(); },
        [&](Solver<scalar_t>& solver, int64_t b) {
          status[b] = solver.solve(data + b * n * m, n, m, maximize, out + b * n);
        });
  });
  for (int64_t b = 0; b < batch; ++b) {
    DA_CHECK(status[b] != Status::kNaN, name, " must not contain NaN (matrix ", b,
             " of the batch does)");
    DA_CHECK(status[b] != Status::kWrongInf, name, " must not contain ",
             maximize ? "+inf with maximize=True (-inf marks a forbidden pair)"
                      : "-inf (+inf marks a forbidden pair)",
             "; matrix ", b, " of the batch does");
    DA_CHECK(status[b] != Status::kInfeasible, name, " matrix ", b,
             " of the batch has no feasible assignment: its allowed (finite) entries admit ",
             "no matching of every row to a distinct column");
  }
  return cols;
}

Tensor linear_assignment_cpu(const Tensor& cost, bool maximize) {
  return linear_assignment_cpu_named(cost, maximize, "cost");
}

STABLE_TORCH_LIBRARY_IMPL(deepalign, CPU, m) {
  m.impl("linear_assignment", TORCH_BOX(&linear_assignment_cpu));
}

}  // namespace deepalign::cpu
