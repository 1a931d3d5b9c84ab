"""Sinkhorn gradients: the fused unrolled backward against autograd through the reference loop,
float64 gradcheck of both gradient modes, and the implicit mode at convergence."""
import pytest
import torch

from deepalign import ops
from deepalign.ops import reference


def _randn(shape, dtype=torch.float64, spread=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def _grad(fn, x, upstream):
    x = x.detach().clone().requires_grad_()
    (fn(x) * upstream).sum().backward()
    return x.grad


# (1, 130) takes the row-split path of the kernels.
@pytest.mark.parametrize("b,n", [(1, 1), (3, 6), (2, 23), (4, 40), (1, 130)])
@pytest.mark.parametrize("n_iters,tau", [(0, 1.0), (1, 0.5), (9, 1.0), (40, 0.2)])
def test_unrolled_matches_autograd_through_reference(b, n, n_iters, tau, dtype, tol):
    s, upstream = _randn((b, n, n), dtype, 2.0, seed=n), _randn((b, n, n), dtype, seed=1)
    got = _grad(lambda x: ops.sinkhorn_project(x, n_iters, tau), s, upstream)
    want = _grad(lambda x: reference.sinkhorn_project(x, n_iters, tau), s.double(),
                 upstream.double())
    assert got.dtype == dtype
    # Gradients scale like |upstream| * exp(scores / tau) at n_iters = 0: compare relatively.
    scale = want.abs().max().item() or 1.0
    torch.testing.assert_close(got.double() / scale, want / scale, **tol)


# The CPU kernels run a matrix in the scaling domain when its side is <= 256 and scores / tau
# span <= 300 (csrc/cpu/sinkhorn_scaling.cpp; float32 scores spanning <= 60 compute in float32),
# and in the log domain otherwise: each case sits on one side. n = 37 leaves a partial SIMD vector
# at the end of every row.
@pytest.mark.parametrize("b,n,spread,tau", [(3, 37, 1.0, 1.0),     # scaling, float32 compute
                                            (3, 37, 2.0, 0.1),     # scaling, float64 compute
                                            (2, 37, 3.0, 0.01),    # log: scores / tau ~ 1e3
                                            (1, 260, 1.0, 0.5)])   # log: n > 256
def test_unrolled_matches_reference_in_both_domains(b, n, spread, tau, dtype, tol):
    s, upstream = _randn((b, n, n), dtype, spread, seed=21), _randn((b, n, n), dtype, seed=22)
    got = _grad(lambda x: ops.sinkhorn_project(x, 6, tau), s, upstream)
    want = _grad(lambda x: reference.sinkhorn_project(x, 6, tau), s.double(), upstream.double())
    assert torch.isfinite(got).all()
    scale = want.abs().max().item()
    # The log domain carries the rounding error of |scores / tau| in the working precision.
    atol = max(tol["atol"], 100 * torch.finfo(dtype).eps * s.abs().max().item() / tau)
    torch.testing.assert_close(got.double() / scale, want / scale, rtol=tol["rtol"], atol=atol)


def test_unrolled_outer_matches_autograd_through_reference(dtype, tol):
    f0, f1 = _randn((2, 30, 5), dtype, seed=2), _randn((2, 30, 5), dtype, seed=3)
    upstream = _randn((2, 30, 30), dtype, seed=4)
    for which in (0, 1):
        def fused(x, which=which):
            return ops.outer_sinkhorn_project(*((x, f1) if which == 0 else (f0, x)), 12, 0.5)

        def slow(x, which=which):
            a, b = (x, f1.double()) if which == 0 else (f0.double(), x)
            return reference.outer_sinkhorn_project(a, b, 12, 0.5)

        got = _grad(fused, (f0, f1)[which], upstream)
        want = _grad(slow, (f0, f1)[which].double(), upstream.double())
        torch.testing.assert_close(got.double(), want, **tol)


def test_gradcheck_unrolled():
    s = _randn((2, 5, 5), seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.sinkhorn_project(x, 6, 0.7), (s,))
    f0 = _randn((2, 4, 3), seed=8).requires_grad_()
    f1 = _randn((2, 4, 3), seed=9).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.outer_sinkhorn_project(a, b, 5, 0.9),
                                    (f0, f1))
    assert torch.autograd.gradcheck(lambda x: ops.sinkhorn_project(x, 3), (s[0],))
    # scores / tau spanning ~ 1e3: the log-domain kernels (the others above run in the scaling
    # domain).
    wide = _randn((2, 5, 5), spread=3.0, seed=23).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.sinkhorn_project(x, 4, 0.01), (wide,))


def test_gradcheck_implicit_at_convergence():
    # Mild scores and many iterations: the forward is at its fixed point to float64 precision,
    # where the implicit gradient is the exact derivative.
    s = _randn((2, 5, 5), spread=0.5, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: ops.sinkhorn_project(x, 400, 1.0, grad_mode="implicit"), (s,))
    f0 = _randn((1, 4, 2), spread=0.5, seed=11).requires_grad_()
    f1 = _randn((1, 4, 2), spread=0.5, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ops.outer_sinkhorn_project(a, b, 400, 1.0, grad_mode="implicit"), (f0, f1))


def test_implicit_equals_unrolled_at_convergence(dtype):
    s, upstream = _randn((3, 20, 20), dtype, seed=13), _randn((3, 20, 20), dtype, seed=14)
    implicit = _grad(lambda x: ops.sinkhorn_project(x, 300, 0.5, grad_mode="implicit"), s,
                     upstream)
    unrolled = _grad(lambda x: ops.sinkhorn_project(x, 300, 0.5), s, upstream)
    assert implicit.dtype == dtype
    torch.testing.assert_close(implicit, unrolled, rtol=1e-3, atol=1e-4 if dtype == torch.float32
                               else 1e-9)


def test_implicit_near_a_permutation_stays_finite():
    s = 20.0 * torch.eye(8, dtype=torch.float64).expand(2, 8, 8) + _randn((2, 8, 8), seed=15)
    grad = _grad(lambda x: ops.sinkhorn_project(x, 100, 1.0, grad_mode="implicit"), s,
                 _randn((2, 8, 8), seed=16))
    assert torch.isfinite(grad).all()


def test_backward_leaves_the_incoming_gradient_alone():
    s = _randn((2, 7, 7), seed=17).requires_grad_()
    upstream = _randn((2, 7, 7), seed=18)
    before = upstream.clone()
    ops.sinkhorn_project(s, 5).backward(upstream)
    assert torch.equal(upstream, before)


def test_backward_of_a_batch_of_zero_and_non_contiguous_gradient():
    s = torch.zeros(0, 4, 4, dtype=torch.float64, requires_grad=True)
    ops.sinkhorn_project(s, 3).sum().backward()
    assert s.grad.shape == (0, 4, 4)
    s = _randn((2, 6, 6), seed=19).requires_grad_()
    upstream = _randn((2, 6, 6), seed=20)
    ops.sinkhorn_project(s, 4).backward(upstream.transpose(1, 2))
    want = _grad(lambda x: reference.sinkhorn_project(x, 4), s, upstream.transpose(1, 2))
    torch.testing.assert_close(s.grad, want)
