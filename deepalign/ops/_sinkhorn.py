"""Fused Sinkhorn projection: the public wrappers, their fakes and their autograd."""
import torch

from deepalign.ops._checks import (as_batch, check_matrices, check_sinkhorn_args,
                                   needs_autograd)
from deepalign.ops._extension import extension_loaded, require_extension
from deepalign.ops.reference import SINKHORN_DOC

_OPS = torch.ops.deepalign

_GRAD_DOC = r"""
    grad_mode : {"unrolled", "implicit"}
        ``"unrolled"`` (default): the exact gradient of the ``n_iters`` iterations above, as
        autograd through the reference loop would give, computed by a fused backward that
        replays the saved per-iteration potentials (O(n_iters * n) memory, never the
        intermediate matrices). ``"implicit"``: the implicit-function gradient at the returned
        plan (Eisenberger et al., CVPR 2022; what the Deep-Align code uses): with
        ``G = dLoss/dP``, ``r = (P*G) 1``, ``c = (P*G)^T 1`` it solves
        ``(I - P P^T + 1 1^T / n) a = r - P c``, sets ``b = c - P^T a`` and returns
        ``d scores = P * (G - a 1^T - 1 b^T) / tau``. It costs O(n^3) per matrix independent of
        ``n_iters``, but it is the gradient of the *fixed point*: exact only when the forward has
        converged (columns summing to 1), and increasingly ill-conditioned as ``P`` approaches
        a permutation.
"""


def _check(scores, n_iters, tau, grad_mode):
    require_extension()
    check_matrices(scores, "scores", square=True)
    check_sinkhorn_args(n_iters, tau, grad_mode)


class _ImplicitSinkhorn(torch.autograd.Function):
    """Forward through the fused kernel, backward by implicit differentiation at P."""

    @staticmethod
    def forward(scores, n_iters, tau):
        return _OPS.sinkhorn_project(scores, n_iters, tau)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.tau = inputs[2]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_p):
        (p,) = ctx.saved_tensors
        return _OPS._sinkhorn_implicit_backward(grad_p, p, ctx.tau), None, None


def sinkhorn_project(scores: torch.Tensor, n_iters: int = 20, tau: float = 1.0,
                     grad_mode: str = "unrolled") -> torch.Tensor:
    _check(scores, n_iters, tau, grad_mode)
    batch = as_batch(scores)
    if not needs_autograd(batch):
        with torch._C._AutoDispatchBelowAutograd():
            p = _OPS.sinkhorn_project(batch, n_iters, float(tau))[0]
    elif grad_mode == "implicit":
        p = _ImplicitSinkhorn.apply(batch, n_iters, float(tau))
    else:
        p = _OPS.sinkhorn_project(batch, n_iters, float(tau))[0]
    return p[0] if scores.dim() == 2 else p


sinkhorn_project.__doc__ = SINKHORN_DOC.rstrip().replace(
    "\n\n    Returns", _GRAD_DOC.rstrip() + "\n\n    Returns") + "\n"


def outer_sinkhorn_project(f0: torch.Tensor, f1: torch.Tensor, n_iters: int = 20,
                           tau: float = 1.0, grad_mode: str = "unrolled") -> torch.Tensor:
    r"""Sinkhorn projection of the similarity ``f0 @ f1^T`` in one fused call.

    Equal to ``sinkhorn_project(f0 @ f1.mT, n_iters, tau, grad_mode)`` (see there for the
    iteration and the gradient modes), but the score matrix is computed inside the kernel and
    the backward gives ``d f0 = dS f1`` and ``d f1 = dS^T f0`` directly.

    Parameters
    ----------
    f0, f1 : Tensor, shape (B, n, d) or (n, d)
        Features of the two sets of n items; same shape, float32 or float64.
    n_iters, tau, grad_mode
        As in :func:`sinkhorn_project`.

    Returns
    -------
    P : Tensor, shape (B, n, n) or (n, n)
        ``P[b, i, j]`` couples item i of ``f0`` with item j of ``f1``.
    """
    require_extension()
    check_matrices(f0, "f0")
    check_matrices(f1, "f1")
    if f0.shape != f1.shape:
        raise ValueError(f"f0 and f1 must have the same shape (B, n, d) or (n, d), got "
                         f"{tuple(f0.shape)} and {tuple(f1.shape)}")
    if f0.dtype != f1.dtype:
        raise TypeError(f"f0 and f1 must have the same dtype, got {f0.dtype} and {f1.dtype}")
    check_sinkhorn_args(n_iters, tau, grad_mode)
    b0, b1 = as_batch(f0), as_batch(f1)
    if not needs_autograd(b0, b1):
        with torch._C._AutoDispatchBelowAutograd():
            p = _OPS.outer_sinkhorn_project(b0, b1, n_iters, float(tau))[0]
    elif grad_mode == "implicit":
        p = _ImplicitSinkhorn.apply(b0 @ b1.mT, n_iters, float(tau))
    else:
        p = _OPS.outer_sinkhorn_project(b0, b1, n_iters, float(tau))[0]
    return p[0] if f0.dim() == 2 else p


# --- fakes: shapes and dtypes only, for torch.compile and meta tensors --------------------------

def _fake_forward(scores, n_iters, tau):
    batch, n = scores.shape[0], scores.shape[-1]
    return (torch.empty_like(scores), scores.new_empty(batch, n_iters, n),
            scores.new_empty(batch, n_iters, n))


def _fake_outer_forward(f0, f1, n_iters, tau):
    batch, n = f0.shape[0], f0.shape[1]
    return (f0.new_empty(batch, n, n), f0.new_empty(batch, n_iters, n),
            f0.new_empty(batch, n_iters, n))


# --- autograd: the unrolled backward is an op of its own -----------------------------------------

def _setup_forward(ctx, inputs, output):
    scores, n_iters, tau = inputs
    _, row_pot, col_pot = output
    ctx.mark_non_differentiable(row_pot, col_pot)
    ctx.save_for_backward(scores, row_pot, col_pot)
    ctx.n_iters, ctx.tau = n_iters, tau


def _backward(ctx, grad_p, _grad_row_pot, _grad_col_pot):
    scores, row_pot, col_pot = ctx.saved_tensors
    grad = _OPS._sinkhorn_project_backward(grad_p, scores, row_pot, col_pot, ctx.n_iters, ctx.tau)
    return grad, None, None


def _setup_outer(ctx, inputs, output):
    f0, f1, n_iters, tau = inputs
    _, row_pot, col_pot = output
    ctx.mark_non_differentiable(row_pot, col_pot)
    ctx.save_for_backward(f0, f1, row_pot, col_pot)
    ctx.n_iters, ctx.tau = n_iters, tau


def _backward_outer(ctx, grad_p, _grad_row_pot, _grad_col_pot):
    f0, f1, row_pot, col_pot = ctx.saved_tensors
    grad_f0, grad_f1 = _OPS._outer_sinkhorn_project_backward(grad_p, f0, f1, row_pot, col_pot,
                                                             ctx.n_iters, ctx.tau)
    return grad_f0, grad_f1, None, None


def _register() -> None:
    torch.library.register_fake("deepalign::sinkhorn_project")(_fake_forward)
    torch.library.register_fake("deepalign::outer_sinkhorn_project")(_fake_outer_forward)
    torch.library.register_fake("deepalign::_sinkhorn_project_backward")(
        lambda grad_p, scores, row_pot, col_pot, n_iters, tau: torch.empty_like(scores))
    torch.library.register_fake("deepalign::_outer_sinkhorn_project_backward")(
        lambda grad_p, f0, f1, row_pot, col_pot, n_iters, tau: (torch.empty_like(f0),
                                                                 torch.empty_like(f1)))
    torch.library.register_fake("deepalign::_sinkhorn_implicit_backward")(
        lambda grad_p, p, tau: torch.empty_like(p))
    torch.library.register_autograd("deepalign::sinkhorn_project", _backward,
                                    setup_context=_setup_forward)
    torch.library.register_autograd("deepalign::outer_sinkhorn_project", _backward_outer,
                                    setup_context=_setup_outer)


if extension_loaded():
    _register()
