"""Argument checks shared by the op wrappers: each error names the argument and what was expected.

They look only at metadata (type, dtype, shape), so they also run under ``torch.compile``; value
checks (NaN, -inf) happen inside the kernels, which scan the data they read anyway.
"""
import math

import torch

_REAL = (torch.float32, torch.float64)


def check_matrices(x, name: str, square: bool = False) -> None:
    """``x`` must be a float32/float64 tensor of shape (n, m) or (B, n, m)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _REAL:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    shape = "(n, n) or (B, n, n)" if square else "(n, m) or (B, n, m)"
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}")
    if square and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must hold square matrices {shape}, got shape {tuple(x.shape)}")


def check_sinkhorn_args(n_iters, tau, grad_mode) -> None:
    """``n_iters`` an int >= 0, ``tau`` a finite number > 0, ``grad_mode`` a known mode."""
    if isinstance(n_iters, bool) or not isinstance(n_iters, int) or n_iters < 0:
        raise ValueError(f"n_iters must be an int >= 0, got {n_iters!r}")
    # A chained comparison rather than math.isfinite: it also traces under torch.compile.
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if grad_mode not in ("unrolled", "implicit"):
        raise ValueError(f"grad_mode must be 'unrolled' or 'implicit', got {grad_mode!r}")


def as_batch(x: torch.Tensor) -> torch.Tensor:
    """View a single matrix as a batch of one; a batch is returned unchanged."""
    return x.unsqueeze(0) if x.dim() == 2 else x


def needs_autograd(*inputs) -> bool:
    """Whether a call must pass through the ops' autograd layer.

    That layer is Python and runs on every call, gradient or not, costing more host time than
    a small kernel (benchmarks/RESULTS.md); calls no gradient can flow through skip it.
    ``torch.compile`` traces the ops themselves, so it always takes the autograd path.
    """
    return torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and any(x.requires_grad for x in inputs))
