// What the kernels need beyond torch/csrc/stable/ops.h, on the stable ABI only: dtype dispatch
// (ATen's AT_DISPATCH_* macros are not part of it) and the few ATen ops called by name through
// the stable dispatcher shim, the way ops.h itself is written. Only ops whose arguments the
// stable ABI can pass (tensors, ints, bools) are used: no at::Scalar crosses the boundary.
#pragma once
#include <torch/csrc/stable/c/shim.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>

#include <array>

#include "checks.h"

namespace deepalign {

template <typename T>
struct TypeTag {
  using type = T;
};

// fn(TypeTag<scalar_t>{}) for float32 and float64 tensors (AT_DISPATCH_FLOATING_TYPES).
template <typename Fn>
void dispatch_real(ScalarType dtype, const char* name, const Fn& fn) {
  switch (dtype) {
    case ScalarType::Float:
      return fn(TypeTag<float>{});
    case ScalarType::Double:
      return fn(TypeTag<double>{});
    default:
      throw std::runtime_error(
          message('"', name, "\" not implemented for '", torch::headeronly::toString(dtype), "'"));
  }
}

// The same, also for float16 and bfloat16 (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16)).
template <typename Fn>
void dispatch_floating(ScalarType dtype, const char* name, const Fn& fn) {
  switch (dtype) {
    case ScalarType::Half:
      return fn(TypeTag<torch::headeronly::Half>{});
    case ScalarType::BFloat16:
      return fn(TypeTag<torch::headeronly::BFloat16>{});
    default:
      return dispatch_real(dtype, name, fn);
  }
}

// Calls the operator <name>.<overload> ("aten::bmm", "") through the stable dispatcher; returns
// its (first) output.
template <typename... Args>
Tensor call_op(const char* name, const char* overload, const Args&... args) {
  std::array<StableIValue, sizeof...(Args)> stack{torch::stable::detail::from(args)...};
  STABLE_TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

namespace aten {

inline Tensor bmm(const Tensor& a, const Tensor& b) { return call_op("aten::bmm", "", a, b); }

inline Tensor mul(const Tensor& a, const Tensor& b) { return call_op("aten::mul", "Tensor", a, b); }

// Solves A x = b for a batch (B, n, n) x (B, n, k).
inline Tensor linalg_solve(const Tensor& a, const Tensor& b) {
  return call_op("aten::linalg_solve", "", a, b, /*left=*/true);
}

inline Tensor div(const Tensor& a, const Tensor& b) { return call_op("aten::div", "Tensor", a, b); }

inline Tensor isfinite(const Tensor& t) { return call_op("aten::isfinite", "", t); }

inline Tensor all(const Tensor& t) { return call_op("aten::all", "", t); }

// A copy of self with src[...] written at index along dim (Tensor.scatter(dim, index, src)).
inline Tensor scatter(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  return call_op("aten::scatter", "src", self, dim, index, src);
}

}  // namespace aten
}  // namespace deepalign
