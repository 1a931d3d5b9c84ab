"""Fused kernels: Sinkhorn projection (with outer product), exact batched assignment and the
encoder's row/column max-pooling.

Every op is a ``torch.ops.deepalign`` operator with CPU (and, when built, CUDA) kernels, a fake
for ``torch.compile`` and, where differentiable, a backward that is an op of its own.
``row_col_max`` has a CPU kernel only; on other devices its wrapper runs the reference.
``deepalign.ops.reference`` holds the slow pure-PyTorch versions that define the semantics.
"""
from deepalign.ops._assignment import hard_permutation, linear_assignment
from deepalign.ops._extension import (compiled_backends, extension_error, extension_loaded,
                                      has_cuda_kernels, require_extension)
from deepalign.ops._pooling import row_col_max
from deepalign.ops._sinkhorn import outer_sinkhorn_project, sinkhorn_project

__all__ = ["compiled_backends", "extension_error", "extension_loaded", "hard_permutation",
           "has_cuda_kernels", "linear_assignment", "outer_sinkhorn_project",
           "require_extension", "row_col_max", "sinkhorn_project"]
