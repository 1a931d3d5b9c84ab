// Input checks shared by the CPU and CUDA kernels. Each message names the argument and what was
// expected, so a bad call is a readable Python RuntimeError, never a crash.
#pragma once
#include <ATen/ATen.h>

#define DA_CHECK_FLOAT(t, name)                                                              \
  TORCH_CHECK_TYPE((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble ||    \
                       (t).scalar_type() == at::kHalf || (t).scalar_type() == at::kBFloat16, \
                   name " must be a floating-point tensor, got ", (t).scalar_type())

#define DA_CHECK_DIM(t, d, name, shape)                                                 \
  TORCH_CHECK((t).dim() == (d), name " must be " shape " (", (d), "-D), got shape ", \
              (t).sizes())

#define DA_CHECK_SQUARE(t, name)                                                              \
  TORCH_CHECK((t).size(-1) == (t).size(-2), name " must hold square matrices (B, n, n), got ", \
              (t).sizes())

#define DA_CHECK_SAME_DEVICE(a, b, na, nb)                                                  \
  TORCH_CHECK((a).device() == (b).device(), na " and " nb " must be on the same device, got ", \
              (a).device(), " and ", (b).device())

#define DA_CHECK_ITERS(n_iters) \
  TORCH_CHECK((n_iters) >= 0, "n_iters must be >= 0, got ", (n_iters))

#define DA_CHECK_TAU(tau) \
  TORCH_CHECK((tau) > 0 && std::isfinite(tau), "tau must be a finite number > 0, got ", (tau))

// The CPU kernels compute in float32 or float64 only.
#define DA_CHECK_REAL(t, name)                                                             \
  TORCH_CHECK_TYPE((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble,    \
                   name " must be float32 or float64, got ", (t).scalar_type())

#define DA_CHECK_SAME_DTYPE(a, b, na, nb)                                                     \
  TORCH_CHECK_TYPE((a).scalar_type() == (b).scalar_type(), na " and " nb                      \
                   " must have the same dtype, got ", (a).scalar_type(), " and ", (b).scalar_type())

// A batch of assignment problems: (B, n, m) float32/float64 with n <= m. `name` is the
// argument as the caller knows it ("cost", "scores").
inline void check_assignment_input(const at::Tensor& cost, const char* name) {
  TORCH_CHECK(cost.dim() == 3, name, " must be (B, n, m) (3-D), got shape ", cost.sizes());
  TORCH_CHECK_TYPE(cost.scalar_type() == at::kFloat || cost.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", cost.scalar_type());
  TORCH_CHECK(cost.size(1) <= cost.size(2), name,
              " must have no more rows than columns (n <= m), got shape ", cost.sizes(),
              "; transpose it");
}
