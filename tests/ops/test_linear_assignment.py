"""Exact assignment: optimal cost against scipy and a brute-force oracle, ties, forbidden pairs,
infeasibility and bad input; hard_permutation as its maximising one-hot form."""
import itertools
import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepalign import ops

OPS = torch.ops.deepalign


def _rand(shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _total(cost, cols):
    """Total cost of each assignment in float64, shape (B,)."""
    return cost.double().gather(-1, cols.unsqueeze(-1)).sum((-2, -1))


def _scipy_total(cost, maximize):
    totals = []
    for c in cost.double().numpy():
        rows, cols = scipy.optimize.linear_sum_assignment(c, maximize=maximize)
        totals.append(c[rows, cols].sum())
    return torch.tensor(totals, dtype=torch.float64)


def _assert_injective(cols, m):
    assert cols.dtype == torch.long
    assert ((cols >= 0) & (cols < m)).all()
    for row in cols.reshape(-1, cols.shape[-1]):
        assert len(set(row.tolist())) == len(row)


def _near_permutation(b, n, noise, seed):
    """Sinkhorn plans of a noisy permutation, the structured input rounding sees in practice."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(b)])
    s = 3.0 * torch.nn.functional.one_hot(perm, n).double()
    return ops.sinkhorn_project(s + noise * torch.randn(b, n, n, generator=gen,
                                                        dtype=torch.float64), 20, 0.5)


@pytest.mark.parametrize("b,n,m", [(1, 1, 1), (5, 7, 7), (3, 40, 40), (4, 9, 23), (2, 1, 5),
                                   (2, 130, 130)])
@pytest.mark.parametrize("maximize", [False, True])
def test_optimal_cost_matches_scipy(b, n, m, maximize, dtype):
    cost = _rand((b, n, m), dtype, seed=n * m)
    cols = ops.linear_assignment(cost, maximize=maximize)
    assert cols.shape == (b, n)
    _assert_injective(cols, m)
    torch.testing.assert_close(_total(cost, cols), _scipy_total(cost, maximize), rtol=0,
                               atol=1e-9)


@pytest.mark.parametrize("noise", [0.3, 1.0, 3.0])
def test_structured_near_permutation_scores(noise):
    p = _near_permutation(6, 60, noise, seed=int(10 * noise))
    cols = ops.linear_assignment(p, maximize=True)
    _assert_injective(cols, 60)
    torch.testing.assert_close(_total(p, cols), _scipy_total(p, True), rtol=0, atol=1e-9)


def _contested(kind, n, m, seed):
    """Costs where the rows compete for the same columns, so the row-reduction phase must
    displace rows, exhaust its budget or break ties, and leave the rest to augmenting paths."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, generator=gen), torch.rand(1, m, generator=gen)
    if kind == "rank-1":  # every row's cheapest column is the same one
        return -x * y
    if kind == "one-column":
        return torch.rand(n, m, generator=gen) + 10.0 * (torch.arange(m) != 0)
    if kind == "constant-rows":  # every column ties within a row
        return x.expand(n, m).clone()
    return torch.randint(0, 3, (n, m), generator=gen).double()  # "three-levels": many ties


@pytest.mark.parametrize("kind", ["rank-1", "one-column", "constant-rows", "three-levels"])
@pytest.mark.parametrize("n,m", [(40, 40), (30, 45)])
@pytest.mark.parametrize("maximize", [False, True])
def test_contested_columns_are_optimal(kind, n, m, maximize, dtype):
    cost = torch.stack([_contested(kind, n, m, seed) for seed in range(3)]).to(dtype)
    cols = ops.linear_assignment(cost, maximize=maximize)
    _assert_injective(cols, m)
    torch.testing.assert_close(_total(cost, cols), _scipy_total(cost, maximize), rtol=0,
                               atol=1e-9)


def test_result_does_not_depend_on_thread_count():
    cost = torch.cat([_near_permutation(7, 50, 1.0, seed=6), _rand((7, 50, 50), seed=6)])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.linear_assignment(cost, maximize=True)
        torch.set_num_threads(2)
        assert torch.equal(ops.linear_assignment(cost, maximize=True), one)
    finally:
        torch.set_num_threads(threads)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), extra=st.integers(0, 2), maximize=st.booleans(),
       levels=st.sampled_from([3, 1000]), seed=st.integers(0, 2**16))
def test_brute_force_oracle_small(n, extra, maximize, levels, seed):
    # Few distinct levels make ties common; the optimum must still be attained.
    m = n + extra
    gen = torch.Generator().manual_seed(seed)
    cost = torch.randint(0, levels, (1, n, m), generator=gen).double()
    cols = ops.linear_assignment(cost, maximize=maximize)[0]
    _assert_injective(cols, m)
    c = cost[0].numpy()
    pick = max if maximize else min
    best = pick(sum(c[i, j] for i, j in enumerate(p))
                for p in itertools.permutations(range(m), n))
    assert c[np.arange(n), cols.numpy()].sum() == best


def test_ties_are_deterministic():
    cost = torch.ones(3, 8, 8)
    cost[1, :, :4] = 0.0
    first = ops.linear_assignment(cost)
    for _ in range(3):
        assert torch.equal(ops.linear_assignment(cost), first)
    same = ops.linear_assignment(cost[:1].expand(5, 8, 8))
    assert (same == first[0]).all()
    _assert_injective(first, 8)


def test_forbidden_pairs_are_avoided():
    cost = _rand((2, 6, 6), seed=1)
    cost[:, torch.arange(6), torch.arange(6)] = math.inf  # no fixed points allowed
    cols = ops.linear_assignment(cost)
    assert (cols != torch.arange(6)).all()
    torch.testing.assert_close(_total(cost, cols), _scipy_total(cost, False))
    scores = -cost
    cols = ops.linear_assignment(scores, maximize=True)
    assert (cols != torch.arange(6)).all()


@pytest.mark.parametrize("maximize", [False, True])
def test_infeasible_problems_are_errors(maximize):
    forbidden = -math.inf if maximize else math.inf
    cost = _rand((3, 5, 5), seed=2)
    cost[1, :2, :] = forbidden
    cost[1, :2, 0] = 0.0  # two rows that can only take column 0
    with pytest.raises(RuntimeError, match="matrix 1 of the batch has no feasible assignment"):
        ops.linear_assignment(cost, maximize=maximize)
    cost = torch.full((1, 4, 6), forbidden)
    with pytest.raises(RuntimeError, match="no feasible assignment"):
        ops.linear_assignment(cost, maximize=maximize)
    cost[0, 3, 5] = math.nan  # a bad value is reported even after an all-forbidden row
    with pytest.raises(RuntimeError, match="must not contain NaN"):
        ops.linear_assignment(cost, maximize=maximize)


def _raises(match, fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        fn(*args, **kwargs)


def test_bad_input_names_the_argument():
    cost = _rand((2, 4, 4))
    bad = cost.clone()
    bad[1, 2, 3] = math.nan
    _raises("cost must not contain NaN", ops.linear_assignment, bad)
    bad[1, 2, 3] = -math.inf
    _raises(r"cost must not contain -inf", ops.linear_assignment, bad)
    bad[1, 2, 3] = math.inf
    _raises(r"cost must not contain \+inf with maximize=True", ops.linear_assignment, bad, True)
    _raises(r"cost must have no more rows than columns \(n <= m\)", ops.linear_assignment,
            cost[:, :, :3])
    _raises("n <= m", OPS.linear_assignment, cost[:, :, :3], False)
    _raises("cost must be float32 or float64", ops.linear_assignment, cost.long())
    _raises("cost must be", ops.linear_assignment, cost[0, 0])
    _raises("maximize must be a bool", ops.linear_assignment, cost, "yes")
    _raises("scores must hold square", ops.hard_permutation, cost[:, :3])
    _raises("scores must not contain NaN", ops.hard_permutation, cost * math.nan)


def test_edge_shapes_and_layouts(dtype):
    assert ops.linear_assignment(torch.zeros(0, 3, 4, dtype=dtype)).shape == (0, 3)
    assert ops.linear_assignment(torch.zeros(2, 0, 3, dtype=dtype)).shape == (2, 0)
    assert ops.linear_assignment(torch.tensor([[5.0]], dtype=dtype)).tolist() == [0]
    cost = _rand((3, 12, 12), dtype, seed=3)
    single = ops.linear_assignment(cost[2])
    assert single.shape == (12,) and torch.equal(single, ops.linear_assignment(cost)[2])
    t = cost.transpose(1, 2)
    assert torch.equal(ops.linear_assignment(t), ops.linear_assignment(t.contiguous()))


def test_result_does_not_require_grad():
    cost = _rand((2, 5, 5)).requires_grad_()
    assert not ops.linear_assignment(cost).requires_grad
    assert not ops.hard_permutation(cost).requires_grad


def test_hard_permutation_is_the_maximising_one_hot(dtype):
    scores = _rand((4, 15, 15), dtype, seed=4)
    p = ops.hard_permutation(scores)
    assert p.dtype == dtype and p.shape == scores.shape
    assert ((p == 0) | (p == 1)).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 15, dtype=dtype))
    torch.testing.assert_close(p.sum(-2), torch.ones(4, 15, dtype=dtype))
    cols = ops.linear_assignment(scores, maximize=True)
    assert torch.equal(p.argmax(-1), cols)
    torch.testing.assert_close((p * scores).sum((-2, -1)).double(), _scipy_total(scores, True))
    assert torch.equal(ops.hard_permutation(scores[0]), p[0])


def test_rounding_log_plan_equals_rounding_scores():
    # The potentials add one constant to every permutation (kernels.md §5c).
    scores = torch.randn(3, 25, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    log_p = ops.sinkhorn_project(scores, 7, 0.3).log()
    a, b = ops.hard_permutation(scores), ops.hard_permutation(log_p)
    torch.testing.assert_close((a * scores).sum((-2, -1)), (b * scores).sum((-2, -1)))
