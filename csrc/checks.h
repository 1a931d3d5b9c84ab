// Input checks shared by the CPU and CUDA kernels, on the LibTorch stable ABI. Each message names
// the argument and what was expected, so a bad call is a readable Python RuntimeError, never a
// crash. (The stable ABI has no TORCH_CHECK: a failed check throws std::runtime_error, which the
// dispatcher reports as RuntimeError with the message as written here.)
#pragma once
#include <torch/csrc/stable/macros.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/shim_utils.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

// torch 2.10 and 2.11 (TORCH_MIN is 2.10) have only the header-only spelling
#ifndef STABLE_TORCH_ERROR_CODE_CHECK
#define STABLE_TORCH_ERROR_CODE_CHECK(call) TORCH_ERROR_CODE_CHECK(call)
#endif

namespace deepalign {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// The parts of a message, streamed one after the other (what TORCH_CHECK did with c10::str).
template <typename... Args>
std::string message(const Args&... args) {
  std::ostringstream out;
  ((out << args), ...);
  return out.str();
}

// A shape as ATen prints it: "[2, 3, 4]".
inline std::string shape(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

inline std::string dtype_name(const Tensor& t) {
  return torch::headeronly::toString(t.scalar_type());
}

// Whether t has exactly the sizes `expected`.
inline bool has_shape(const Tensor& t, std::initializer_list<int64_t> expected) {
  if (t.dim() != static_cast<int64_t>(expected.size())) return false;
  int64_t d = 0;
  for (int64_t e : expected)
    if (t.size(d++) != e) return false;
  return true;
}

inline bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) != b.size(d)) return false;
  return true;
}

inline std::string device_name(const Tensor& t) {
  const auto device = t.device();
  if (t.is_cpu()) return "cpu";
  return message(t.is_cuda() ? "cuda" : "device", ":", device.index());
}

inline bool is_real(const Tensor& t) {
  return t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double;
}

}  // namespace deepalign

#define DA_CHECK(cond, ...)                                                   \
  do {                                                                        \
    if (!(cond)) throw std::runtime_error(::deepalign::message(__VA_ARGS__)); \
  } while (0)

#define DA_CHECK_FLOAT(t, name)                                                           \
  DA_CHECK(::deepalign::is_real(t) || (t).scalar_type() == ::deepalign::ScalarType::Half || \
               (t).scalar_type() == ::deepalign::ScalarType::BFloat16,                  \
           name " must be a floating-point tensor, got ", ::deepalign::dtype_name(t))

#define DA_CHECK_DIM(t, d, name, shape_text)                                               \
  DA_CHECK((t).dim() == (d), name " must be " shape_text " (", (d), "-D), got shape ", \
           ::deepalign::shape(t))

#define DA_CHECK_SQUARE(t, name)                                                    \
  DA_CHECK((t).size(-1) == (t).size(-2), name " must hold square matrices (B, n, n), got ", \
           ::deepalign::shape(t))

#define DA_CHECK_ITERS(n_iters) DA_CHECK((n_iters) >= 0, "n_iters must be >= 0, got ", (n_iters))

#define DA_CHECK_TAU(tau) \
  DA_CHECK((tau) > 0 && std::isfinite(tau), "tau must be a finite number > 0, got ", (tau))

#define DA_CHECK_SAME_DEVICE(a, b, na, nb)                                                   \
  DA_CHECK((a).device() == (b).device(), na " and " nb " must be on the same device, got ", \
           ::deepalign::device_name(a), " and ", ::deepalign::device_name(b))

// The CPU kernels compute in float32 or float64 only.
#define DA_CHECK_REAL(t, name)                                                  \
  DA_CHECK(::deepalign::is_real(t), name " must be float32 or float64, got ", \
           ::deepalign::dtype_name(t))

#define DA_CHECK_SAME_DTYPE(a, b, na, nb)                                  \
  DA_CHECK((a).scalar_type() == (b).scalar_type(),                         \
           na " and " nb " must have the same dtype, got ", ::deepalign::dtype_name(a), \
           " and ", ::deepalign::dtype_name(b))

namespace deepalign {

// A batch of assignment problems: (B, n, m) float32/float64 with n <= m. `name` is the
// argument as the caller knows it ("cost", "scores").
inline void check_assignment_input(const Tensor& cost, const char* name) {
  DA_CHECK(cost.dim() == 3, name, " must be (B, n, m) (3-D), got shape ", shape(cost));
  DA_CHECK(is_real(cost), name, " must be float32 or float64, got ", dtype_name(cost));
  DA_CHECK(cost.size(1) <= cost.size(2), name,
           " must have no more rows than columns (n <= m), got shape ", shape(cost),
           "; transpose it");
}

}  // namespace deepalign
