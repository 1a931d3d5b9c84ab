// The one registration site of the deepalign operator library: every schema lives here.
// Backends (cpu/*.cpp, cuda/*.cu) only implement them with STABLE_TORCH_LIBRARY_IMPL.
// Everything in csrc/ uses the LibTorch stable ABI only (torch/csrc/stable, torch/headeronly),
// so one build loads under every torch from DEEPALIGN_TORCH_MIN on (docs/stable_abi.md).
#include <Python.h>
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(deepalign, m) {
  // Log-domain Sinkhorn projection of a batch of square score matrices (B, n, n).
  // Returns P and the per-iteration potentials (row_pot, col_pot), each (B, n_iters, n),
  // that the fused unrolled backward replays. Semantics: deepalign/ops/reference.py.
  m.def("sinkhorn_project(Tensor scores, int n_iters, float tau) -> (Tensor, Tensor, Tensor)");
  m.def("_sinkhorn_project_backward(Tensor grad_p, Tensor scores, Tensor row_pot, Tensor col_pot, "
        "int n_iters, float tau) -> Tensor");
  // The same projection of scores = f0 @ f1^T, (B, n, d) x (B, n, d), without materialising scores
  // outside the kernel.
  m.def("outer_sinkhorn_project(Tensor f0, Tensor f1, int n_iters, float tau) -> (Tensor, Tensor, Tensor)");
  m.def("_outer_sinkhorn_project_backward(Tensor grad_p, Tensor f0, Tensor f1, Tensor row_pot, "
        "Tensor col_pot, int n_iters, float tau) -> (Tensor, Tensor)");
  // Implicit-function gradient at a (converged) doubly-stochastic plan P: d scores.
  m.def("_sinkhorn_implicit_backward(Tensor grad_p, Tensor p, float tau) -> Tensor");
  // Exact batched linear assignment (B, n, m), n <= m: int64 (B, n), column of each row.
  m.def("linear_assignment(Tensor cost, bool maximize) -> Tensor");
  // One-hot (B, n, n) permutation maximising <scores, P>.
  m.def("hard_permutation(Tensor scores) -> Tensor");
  // Max of w (B, n, m, c) over each row and over each column: rows (B, n, c), cols (B, m, c)
  // and their int64 indices (first index on ties). The backward scatters into a zero (B, n, m, c).
  m.def("row_col_max(Tensor w) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_row_col_max_backward(Tensor grad_rows, Tensor grad_cols, Tensor row_idx, "
        "Tensor col_idx) -> Tensor");
  // relu(w @ weight + row_bias[:, :, None] + col_bias[:, None]) for w (B, n, m, c_in), with its
  // pools ('mean' or 'max') over each row (B, n, c_out) and each column (B, m, c_out); the
  // first output is empty (0,) unless keep_output. Inference only (no autograd).
  m.def("linear_relu_pool(Tensor w, Tensor weight, Tensor row_bias, Tensor col_bias, "
        "str reduction, bool keep_output) -> (Tensor, Tensor, Tensor)");
  // One message-passing step over a weight-space graph shared by a batch of B networks:
  // msg = relu(x_src[:, src] + x_dst[:, dst] + edge) (B, E, c), summed per destination node
  // (to_dst) and per source node (to_src), each (B, N, c). src, dst: int64 (E,) in [0, N).
  m.def("edge_message_aggregate(Tensor x_src, Tensor x_dst, Tensor edge, Tensor src, "
        "Tensor dst) -> (Tensor, Tensor, Tensor)");
  // Its backward: (grad_x_src, grad_x_dst, grad_edge).
  m.def("_edge_message_aggregate_backward(Tensor grad_msg, Tensor grad_to_dst, "
        "Tensor grad_to_src, Tensor x_src, Tensor x_dst, Tensor edge, Tensor src, Tensor dst) "
        "-> (Tensor, Tensor, Tensor)");
}

// `import deepalign._C` loads this shared library, which runs the registrations above.
// No pybind11: a bare module on the limited Python API (one abi3 binary for every CPython),
// which also says which torch it was compiled against and which it needs at least.
#ifndef DEEPALIGN_BUILT_WITH_TORCH
#define DEEPALIGN_BUILT_WITH_TORCH "unknown"
#endif
#ifndef DEEPALIGN_TORCH_MIN
#define DEEPALIGN_TORCH_MIN "unknown"
#endif

static struct PyModuleDef deepalign_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&deepalign_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "built_with_torch", DEEPALIGN_BUILT_WITH_TORCH) < 0 ||
      PyModule_AddStringConstant(module, "torch_min", DEEPALIGN_TORCH_MIN) < 0 ||
      PyModule_AddStringConstant(module, "abi", "stable") < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
