"""Sinkhorn forward kernels against the float64 reference: values, potentials, shapes, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepalign import ops
from deepalign.ops import reference

OPS = torch.ops.deepalign


def _scores(shape, dtype=torch.float64, spread=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


# n = 130 and 257 with B = 1 take the row-split path (a small batch spread over the threads).
@pytest.mark.parametrize("b,n", [(1, 1), (3, 5), (2, 17), (4, 33), (1, 130), (1, 257), (3, 64)])
@pytest.mark.parametrize("n_iters,tau", [(0, 1.0), (1, 0.5), (20, 1.0), (7, 0.1)])
def test_matches_reference(b, n, n_iters, tau, dtype, tol):
    s = _scores((b, n, n), dtype, seed=n)
    got = ops.sinkhorn_project(s, n_iters, tau)
    want = reference.sinkhorn_project(s.double(), n_iters, tau)
    assert got.dtype == dtype and got.shape == s.shape
    if n_iters == 0:  # exp(scores / tau) is not bounded by 1: compare relatively
        torch.testing.assert_close(got.double(), want, rtol=tol["rtol"], atol=0)
    else:
        torch.testing.assert_close(got.double(), want, **tol)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 3), n=st.integers(1, 40), n_iters=st.integers(0, 12),
       tau=st.floats(0.05, 5.0), spread=st.floats(0.0, 10.0), seed=st.integers(0, 2**16))
def test_random_shapes_match_reference(b, n, n_iters, tau, spread, seed):
    s = _scores((b, n, n), spread=spread, seed=seed)
    got = ops.sinkhorn_project(s, n_iters, tau)
    want = reference.sinkhorn_project(s, n_iters, tau)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_extreme_scores_underflowing_sums(dtype):
    # |scores / tau| ~ 1e4: whole columns underflow in linear scale and take the exact fallback.
    s = _scores((2, 24, 24), dtype, spread=30.0, seed=3)
    got = ops.sinkhorn_project(s, 15, 0.01)
    want = reference.sinkhorn_project(s.double(), 15, 0.01)
    assert torch.isfinite(got).all()
    # log P carries the rounding error of |scores / tau| in the working precision.
    atol = 10 * torch.finfo(dtype).eps * (s.abs().max().item() / 0.01)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=atol)


# tau = 0.7 runs in the scaling domain, tau = 0.005 (scores / tau spanning > 300) in the log
# domain (csrc/cpu/sinkhorn_scaling.cpp): both return the same potentials.
@pytest.mark.parametrize("tau", [0.7, 0.005])
def test_potentials_are_the_documented_log_sum_exps(tau):
    s, n_iters = _scores((2, 9, 9), seed=5), 4
    _, row_pot, col_pot = OPS.sinkhorn_project(s, n_iters, tau)
    assert row_pot.shape == col_pot.shape == (2, n_iters, 9)
    f = torch.zeros(2, 9, 1, dtype=s.dtype)
    for t in range(n_iters):
        g = -torch.logsumexp(s / tau + f, dim=-2, keepdim=True)
        f = -torch.logsumexp(s / tau + g, dim=-1, keepdim=True)
        torch.testing.assert_close(col_pot[:, t], g[:, 0])
        torch.testing.assert_close(row_pot[:, t], f[..., 0])
        torch.testing.assert_close(torch.exp(s / tau + f + g),
                                   reference.sinkhorn_project(s, t + 1, tau))


def test_marginals():
    p = ops.sinkhorn_project(_scores((4, 50, 50)), 200, 1.0)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 50, dtype=p.dtype))
    torch.testing.assert_close(p.sum(-2), torch.ones(4, 50, dtype=p.dtype))


def test_single_matrix_batch_of_zero_and_non_contiguous(dtype, tol):
    s = _scores((3, 12, 12), dtype)
    batched = ops.sinkhorn_project(s, 5, 0.5)
    torch.testing.assert_close(ops.sinkhorn_project(s[1], 5, 0.5), batched[1], **tol)
    assert ops.sinkhorn_project(s[:0], 5, 0.5).shape == (0, 12, 12)
    t = s.transpose(1, 2)
    assert not t.is_contiguous()
    torch.testing.assert_close(ops.sinkhorn_project(t, 5, 0.5),
                               ops.sinkhorn_project(t.contiguous(), 5, 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("b,n,d", [(1, 1, 1), (3, 10, 4), (2, 70, 16)])
def test_outer_matches_reference(b, n, d, dtype, tol):
    f0, f1 = _scores((b, n, d), dtype, seed=1), _scores((b, n, d), dtype, seed=2)
    got = ops.outer_sinkhorn_project(f0, f1, 10, 0.5)
    want = reference.outer_sinkhorn_project(f0.double(), f1.double(), 10, 0.5)
    torch.testing.assert_close(got.double(), want, **tol)
    torch.testing.assert_close(ops.outer_sinkhorn_project(f0[0], f1[0], 10, 0.5), got[0])


def _raises(match, fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("bad", [math.nan, -math.inf, math.inf])
def test_non_finite_scores_are_errors(bad):
    s = _scores((3, 6, 6))
    s[2, 1, 4] = bad
    _raises("scores must be finite", ops.sinkhorn_project, s)
    _raises("scores must be finite", ops.sinkhorn_project, s[:, :, :], 0)
    _raises("scores must be finite", ops.sinkhorn_project, _scores((1, 300, 300)) * bad)


def test_scores_overflowing_after_tau_are_errors():
    _raises("scores must be finite", ops.sinkhorn_project, torch.full((4, 4), 1e30), 3, 1e-10)


def test_bad_arguments_name_the_argument():
    s = _scores((2, 5, 5))
    _raises("scores must be", ops.sinkhorn_project, torch.zeros(5))
    _raises("scores must be", ops.sinkhorn_project, torch.zeros(1, 2, 5, 5))
    _raises("square", ops.sinkhorn_project, torch.zeros(2, 5, 4))
    _raises("scores must be float32 or float64", ops.sinkhorn_project, torch.zeros(3, 3, dtype=torch.long))
    _raises("scores must be a torch.Tensor", ops.sinkhorn_project, [[1.0]])
    _raises("n_iters", ops.sinkhorn_project, s, -1)
    _raises("n_iters", ops.sinkhorn_project, s, 2.5)
    for tau in (0.0, -1.0, math.inf, math.nan):
        _raises("tau", ops.sinkhorn_project, s, 3, tau)
    _raises("grad_mode", ops.sinkhorn_project, s, grad_mode="exact")
    # The C++ entry checks the same, for direct torch.ops calls.
    _raises("n_iters", OPS.sinkhorn_project, s, -1, 1.0)
    _raises("tau", OPS.sinkhorn_project, s, 1, 0.0)
    _raises("scores must be", OPS.sinkhorn_project, s[0], 1, 1.0)
    _raises("scores must be float32 or float64", OPS.sinkhorn_project, s.half(), 1, 1.0)


def test_bad_outer_arguments_name_the_argument():
    f = _scores((2, 5, 3))
    _raises("f0 and f1 must have the same shape", ops.outer_sinkhorn_project, f, f[:, :4])
    _raises("f0 and f1 must have the same dtype", ops.outer_sinkhorn_project, f, f.float())
    _raises("f1 must be", ops.outer_sinkhorn_project, f, f[0, 0])
    _raises("f0 must be float32 or float64", ops.outer_sinkhorn_project, f.long(), f)
    g = f.clone()
    g[1, 2, 0] = math.nan
    _raises("f0 and f1 must be finite", ops.outer_sinkhorn_project, f, g)
    _raises("f0 and f1 must be finite", ops.outer_sinkhorn_project, g * math.inf, f)
    _raises("f0 and f1 must have the same shape", OPS.outer_sinkhorn_project, f, f[:, :4], 1, 1.0)
