// Whether a kernel's input was finite, learnt by the host without a memset kernel, a
// device-to-host copy or a stream synchronisation. Each CTA writes (epoch << 1) | non_finite into
// its own slot of a pinned, mapped host buffer as soon as its tile is loaded, and the host polls
// the slots: the verdict (and the error for a NaN input) comes back while the kernel is still
// iterating, so the host can queue the next work (an autograd backward, say) meanwhile. The epoch
// tells this call's writes from older ones, so the slots are never reset between calls. One
// buffer per host thread: a call waits for every verdict before it returns, so a thread never has
// two launches writing slots.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/stable_cuda.cuh"


namespace deepalign {
namespace cuda {

struct VerdictSlots {
  unsigned* slots = nullptr;  // device view, indexed by blockIdx.x; nullptr: no check
  unsigned epoch = 0;
};

// Called by every thread of the CTA with the CTA-wide result.
__device__ __forceinline__ void publish_verdict(const VerdictSlots& v, bool non_finite) {
  if (v.slots != nullptr && threadIdx.x == 0)
    *reinterpret_cast<volatile unsigned*>(v.slots + blockIdx.x) =
        (v.epoch << 1) | static_cast<unsigned>(non_finite);
}

class FiniteVerdicts {
 public:
  FiniteVerdicts() = default;
  FiniteVerdicts(const FiniteVerdicts&) = delete;
  FiniteVerdicts& operator=(const FiniteVerdicts&) = delete;
  ~FiniteVerdicts() {
    if (host_ != nullptr) (void)cudaFreeHost(host_);  // may run after CUDA shut down: ignore
  }

  // Slots for a launch of `ctas` CTAs on `stream`. None while the stream is captured into a
  // graph: its replays could not report to anyone.
  VerdictSlots prepare(int64_t ctas, cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    DA_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    count_ = capture == cudaStreamCaptureStatusNone ? ctas : 0;
    if (count_ == 0) return {};
    if (count_ > capacity_) grow(count_);
    if (++epoch_ >= (1u << 31)) {  // wrapped: older writes could pass for this call's
      std::fill(host_, host_ + capacity_, 0u);
      epoch_ = 1;
    }
    return {device_, epoch_};
  }

  // Waits until every CTA of the last prepared launch has reported; false if one saw a
  // non-finite value. Never hangs: an idle stream with a slot still missing is an error.
  bool all_finite(cudaStream_t stream) const {
    bool bad = false;
    while (!scan(bad)) {
      const cudaError_t status = cudaStreamQuery(stream);
      if (status == cudaErrorNotReady) continue;
      DA_CUDA_CHECK(status);
      DA_CHECK(scan(bad), "deepalign: a CUDA kernel finished without checking its input");
    }
    return !bad;
  }

 private:
  bool scan(bool& bad) const {
    const volatile unsigned* slots = host_;
    for (int64_t i = 0; i < count_; ++i) {
      const unsigned v = slots[i];
      if ((v >> 1) != epoch_) return false;
      bad |= (v & 1u) != 0;
    }
    return true;
  }

  void grow(int64_t ctas) {
    if (host_ != nullptr) DA_CUDA_CHECK(cudaFreeHost(host_));
    host_ = nullptr;
    capacity_ = std::max<int64_t>({ctas, 2 * capacity_, 1024});
    void* p = nullptr;
    DA_CUDA_CHECK(cudaHostAlloc(&p, capacity_ * sizeof(unsigned),
                                 cudaHostAllocMapped | cudaHostAllocPortable));
    host_ = static_cast<unsigned*>(p);
    std::fill(host_, host_ + capacity_, 0u);
    void* d = nullptr;
    DA_CUDA_CHECK(cudaHostGetDevicePointer(&d, p, 0));
    device_ = static_cast<unsigned*>(d);
  }

  unsigned* host_ = nullptr;
  unsigned* device_ = nullptr;
  int64_t capacity_ = 0;
  int64_t count_ = 0;
  unsigned epoch_ = 0;
};

inline FiniteVerdicts& thread_verdicts() {
  thread_local FiniteVerdicts verdicts;
  return verdicts;
}

}  // namespace cuda
}  // namespace deepalign
