// Dynamic scheduling of independent tasks (one matrix, one assignment problem) over torch's
// threads.
#pragma once
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>

namespace deepalign::cpu {

// Runs work(state, i) for every i in [0, count) on torch's threads, handing out the indices one
// at a time: a static split waits for its slowest chunk, so uneven tasks, or a thread that
// another process preempts, would hold the rest back. Each thread first makes its own state with
// make_state() (scratch buffers reused across its tasks).
template <typename MakeState, typename Work>
void parallel_dynamic(int64_t count, const MakeState& make_state, const Work& work) {
  std::atomic<int64_t> next{0};
  const int64_t threads = torch::stable::get_num_threads();
  const int64_t workers = std::min(count, threads);
  torch::stable::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;) work(state, i);
  });
}

// The same without per-thread state: work(i).
template <typename Work>
void parallel_dynamic(int64_t count, const Work& work) {
  parallel_dynamic(count, [] { return 0; }, [&](int, int64_t i) { work(i); });
}

}  // namespace deepalign::cpu
