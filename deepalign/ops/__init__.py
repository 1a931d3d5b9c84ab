"""Fused kernels: Sinkhorn projection (with outer product), exact batched assignment, the
encoder's row/column max-pooling and its eval-mode entry pass (``linear_relu_pool``), and the
graph encoder's message-passing step (``edge_message_aggregate``).

Every op is a ``torch.ops.deepalign`` operator with CPU (and, when built, CUDA) kernels, a fake
for ``torch.compile`` and, where differentiable, a backward that is an op of its own.
``row_col_max``, ``linear_relu_pool`` and ``edge_message_aggregate`` have CPU kernels only; on
other devices their wrappers run the reference (as ``linear_relu_pool`` does for calls that need a gradient).
``deepalign.ops.reference`` holds the slow pure-PyTorch versions that define the semantics.
"""
from deepalign.ops._assignment import hard_permutation, linear_assignment
from deepalign.ops._edge_message import edge_message_aggregate
from deepalign.ops._extension import (build_info, compiled_backends, extension_error,
                                      extension_loaded, has_cuda_kernels, require_extension)
from deepalign.ops._linear_relu_pool import linear_relu_pool
from deepalign.ops._pooling import row_col_max
from deepalign.ops._sinkhorn import outer_sinkhorn_project, sinkhorn_project

__all__ = ["build_info", "compiled_backends", "edge_message_aggregate", "extension_error",
           "extension_loaded", "hard_permutation", "has_cuda_kernels", "linear_assignment",
           "linear_relu_pool",
           "outer_sinkhorn_project", "require_extension", "row_col_max", "sinkhorn_project"]
