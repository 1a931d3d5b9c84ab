"""Fused kernels: Sinkhorn projection (with outer product) and exact batched assignment."""
from deepalign.ops._extension import (compiled_backends, extension_error, extension_loaded,
                                      has_cuda_kernels, require_extension)

__all__ = ["compiled_backends", "extension_error", "extension_loaded", "has_cuda_kernels",
           "require_extension"]
