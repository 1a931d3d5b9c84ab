"""CUDA kernels against the CPU kernels (and the float64 reference): every op, both dtypes, the
resident-tile, cluster and global-memory Sinkhorn paths, opcheck and float64 gradcheck on CUDA.

Skipped without a GPU. On a machine with a GPU, a build without CUDA kernels is a failure.
"""
import pytest
import torch

from deepalign import ops
from deepalign.ops import reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

OPS = torch.ops.deepalign
CUDA = torch.device("cuda")
# (rtol, atol) between the CPU and CUDA kernels: different exp implementations and orders.
PARITY = {torch.float32: (2e-4, 2e-6), torch.float64: (1e-9, 1e-12)}

# n chosen to cover: one CTA per matrix, clusters of 2-8 CTAs, sizes not a multiple of 32, and
# (n > 512 forward, n > 384 backward) the global-memory path.
SINKHORN_SHAPES = [(3, 1), (5, 7), (64, 32), (2, 100), (1, 128), (3, 224), (1, 300), (2, 400),
                   (1, 600)]


def _cuda(*tensors):
    return [t.to(CUDA) for t in tensors]


def _assert_rel(actual, expected, rtol, scale=None):
    """||actual - expected|| <= rtol * scale (default ||expected||): for gradients pass the
    upstream gradient's norm, since an exact zero (n = 1) is only reproduced up to rounding."""
    err = (actual.cpu().double() - expected.cpu().double()).norm()
    scale = expected.double().norm() if scale is None else scale
    assert err <= rtol * scale + 1e-30, f"error {err:.3e} vs scale {scale:.3e}"


def _scores(b, n, dtype, spread=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(b, n, n, generator=gen)).to(dtype)


OP_NAMES = ["sinkhorn_project", "_sinkhorn_project_backward", "outer_sinkhorn_project",
            "_outer_sinkhorn_project_backward", "_sinkhorn_implicit_backward",
            "linear_assignment", "hard_permutation"]


def test_cuda_kernels_are_built():
    assert ops.has_cuda_kernels(), "a GPU is visible but deepalign._C has no CUDA kernels"
    for name in OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"deepalign::{name}", "CUDA"), name


@pytest.mark.parametrize("b,n", SINKHORN_SHAPES)
@pytest.mark.parametrize("n_iters,tau", [(0, 1.0), (1, 0.5), (7, 0.2)])
def test_sinkhorn_forward_matches_cpu(b, n, n_iters, tau, dtype):
    rtol, atol = PARITY[dtype]
    s = _scores(b, n, dtype, seed=n)
    want = OPS.sinkhorn_project(s, n_iters, tau)
    got = OPS.sinkhorn_project(s.to(CUDA), n_iters, tau)
    for g, w in zip(got, want):
        assert g.device.type == "cuda" and g.dtype == dtype and g.shape == w.shape
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=rtol, atol=atol)
    # Potentials are O(|scores| / tau): compare them relative to that scale.
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g.cpu(), w, rtol=rtol, atol=rtol * (1 + s.abs().max() / tau))


@pytest.mark.parametrize("b,n", [(2, 64), (1, 128), (1, 600)])
def test_sinkhorn_underflow_guard_matches_float64(b, n):
    # tau small enough that whole rows and columns underflow float32 without the max pass.
    s = _scores(b, n, torch.float32, spread=3.0, seed=1)
    want = reference.sinkhorn_project(s.double(), 10, 0.01)
    got = OPS.sinkhorn_project(s.to(CUDA), 10, 0.01)[0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("b,n,d", [(2, 5, 1), (3, 33, 7), (64, 128, 64), (1, 200, 48), (1, 530, 9)])
def test_outer_forward_matches_cpu(b, n, d, dtype):
    rtol, atol = PARITY[dtype]
    gen = torch.Generator().manual_seed(d)
    f0, f1 = (torch.randn(b, n, d, generator=gen, dtype=dtype) / d ** 0.5 for _ in range(2))
    want = OPS.outer_sinkhorn_project(f0, f1, 5, 0.1)
    got = OPS.outer_sinkhorn_project(*_cuda(f0, f1), 5, 0.1)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=rtol, atol=atol)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g.cpu(), w, rtol=rtol, atol=rtol * 20)


@pytest.mark.parametrize("b,n", [(3, 1), (4, 33), (64, 128), (1, 160), (2, 300), (1, 400)])
@pytest.mark.parametrize("n_iters", [0, 1, 6])
def test_sinkhorn_backward_matches_cpu(b, n, n_iters, dtype):
    s = _scores(b, n, dtype, seed=n + n_iters)
    _, row_pot, col_pot = OPS.sinkhorn_project(s, n_iters, 0.3)
    grad = torch.randn(b, n, n, generator=torch.Generator().manual_seed(3), dtype=dtype)
    want = OPS._sinkhorn_project_backward(grad, s, row_pot, col_pot, n_iters, 0.3)
    got = OPS._sinkhorn_project_backward(*_cuda(grad, s, row_pot, col_pot), n_iters, 0.3)
    assert got.device.type == "cuda" and got.dtype == dtype
    scale = max(want.double().norm(), grad.double().norm() / 0.3)
    _assert_rel(got, want, 1e-4 if dtype == torch.float32 else 1e-10, scale)


@pytest.mark.parametrize("b,n,d", [(2, 6, 3), (8, 100, 16), (1, 450, 5)])
def test_outer_backward_matches_cpu(b, n, d, dtype):
    gen = torch.Generator().manual_seed(n)
    f0, f1 = (torch.randn(b, n, d, generator=gen, dtype=dtype) for _ in range(2))
    _, row_pot, col_pot = OPS.outer_sinkhorn_project(f0, f1, 4, 0.5)
    grad = torch.randn(b, n, n, generator=gen, dtype=dtype)
    want = OPS._outer_sinkhorn_project_backward(grad, f0, f1, row_pot, col_pot, 4, 0.5)
    got = OPS._outer_sinkhorn_project_backward(*_cuda(grad, f0, f1, row_pot, col_pot), 4, 0.5)
    for g, w in zip(got, want):
        _assert_rel(g, w, 1e-4 if dtype == torch.float32 else 1e-10)


def test_implicit_backward_matches_cpu(dtype):
    p = OPS.sinkhorn_project(_scores(3, 20, dtype), 200, 1.0)[0]
    grad = torch.randn_like(p)
    want = OPS._sinkhorn_implicit_backward(grad, p, 0.7)
    got = OPS._sinkhorn_implicit_backward(*_cuda(grad, p), 0.7)
    _assert_rel(got, want, 1e-5 if dtype == torch.float32 else 1e-10)


def test_half_inputs_accumulate_in_float32():
    s = _scores(4, 48, torch.float32)
    for half in (torch.float16, torch.bfloat16):
        x = s.to(half)
        p, row_pot, _ = OPS.sinkhorn_project(x.to(CUDA), 5, 0.5)
        assert p.dtype == half and row_pot.dtype == half
        want = OPS.sinkhorn_project(x.float(), 5, 0.5)[0]
        torch.testing.assert_close(p.cpu().float(), want, rtol=2e-2, atol=2e-3)


def test_sinkhorn_is_reproducible_and_accepts_non_contiguous():
    s = _scores(4, 96, torch.float32).to(CUDA)
    a = OPS.sinkhorn_project(s, 10, 0.1)[0]
    b = OPS.sinkhorn_project(s.clone(), 10, 0.1)[0]
    assert torch.equal(a, b)  # fixed-order reductions, no atomics
    t = OPS.sinkhorn_project(s.transpose(1, 2), 10, 0.1)[0]
    torch.testing.assert_close(t, OPS.sinkhorn_project(s.transpose(1, 2).contiguous(), 10, 0.1)[0])


def test_sinkhorn_edge_cases_and_errors():
    for shape in [(0, 4, 4), (2, 0, 0)]:
        p, r, c = OPS.sinkhorn_project(torch.zeros(shape, device=CUDA), 3, 1.0)
        assert p.shape == shape and r.shape == (shape[0], 3, shape[1])
    bad = _scores(2, 16, torch.float32).to(CUDA)
    bad[1, 3, 4] = float("nan")
    with pytest.raises(RuntimeError, match="finite"):
        OPS.sinkhorn_project(bad, 3, 1.0)
    with pytest.raises(RuntimeError, match="finite"):
        OPS.sinkhorn_project(_scores(1, 8, torch.float32).to(CUDA), 3, 1e-40)
    with pytest.raises(RuntimeError, match="n_iters"):
        OPS.sinkhorn_project(bad, -1, 1.0)
    with pytest.raises(RuntimeError, match="square"):
        OPS.sinkhorn_project(torch.zeros(1, 3, 4, device=CUDA), 3, 1.0)


@pytest.mark.parametrize("b", [300, 2000])
def test_sinkhorn_non_finite_verdict_from_every_cta(b):
    # Each CTA reports on its own rows to the host: more CTAs than run at once (and, for b = 2000,
    # than the first report buffer holds), a NaN in the last matrix only, then a finite call.
    s = _scores(b, 8, torch.float32)
    bad = s.clone()
    bad[-1, 7, 5] = float("nan")
    with pytest.raises(RuntimeError, match="finite"):
        OPS.sinkhorn_project(bad.to(CUDA), 3, 0.5)
    got = OPS.sinkhorn_project(s.to(CUDA), 3, 0.5)[0]
    torch.testing.assert_close(got.cpu(), OPS.sinkhorn_project(s, 3, 0.5)[0], rtol=2e-4, atol=2e-6)


def test_sinkhorn_forward_captures_into_a_cuda_graph():
    # Under capture the kernel cannot report to the host: it skips the finiteness check, and each
    # replay recomputes the same plan.
    s = _scores(4, 64, torch.float32).to(CUDA)
    want = OPS.sinkhorn_project(s, 5, 0.5)[0]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = OPS.sinkhorn_project(s, 5, 0.5)[0]
    for _ in range(2):
        got.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want)


def _total(cost, cols):
    return cost.double().gather(-1, cols.cpu().unsqueeze(-1)).sum((-1, -2))


@pytest.mark.parametrize("b,n,m", [(5, 1, 1), (16, 7, 7), (8, 20, 33), (64, 128, 128),
                                   (2, 300, 300)])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("kind", ["uniform", "ties"])
def test_linear_assignment_optimal_like_cpu(b, n, m, maximize, kind, dtype):
    gen = torch.Generator().manual_seed(n * m)
    cost = (torch.rand(b, n, m, generator=gen, dtype=dtype) if kind == "uniform"
            else torch.randint(0, 3, (b, n, m), generator=gen).to(dtype))
    cols = OPS.linear_assignment(cost.to(CUDA), maximize)
    assert cols.device.type == "cuda" and cols.dtype == torch.int64 and cols.shape == (b, n)
    c = cols.cpu()
    assert all(len(set(r.tolist())) == n for r in c) and (c >= 0).all() and (c < m).all()
    want = OPS.linear_assignment(cost, maximize)
    torch.testing.assert_close(_total(cost, cols), _total(cost, want), rtol=1e-12, atol=1e-9)


def test_linear_assignment_wide_problems_fall_back_to_cpu():
    # m = 12000 columns do not fit one block's shared memory: the CPU solver takes over.
    cost = torch.rand(2, 3, 12000, dtype=torch.float64)
    cols = OPS.linear_assignment(cost.to(CUDA), False)
    assert cols.device.type == "cuda"
    torch.testing.assert_close(_total(cost, cols), _total(cost, OPS.linear_assignment(cost, False)))


def test_linear_assignment_forbidden_pairs_and_errors():
    cost = torch.rand(3, 6, 6, dtype=torch.float64)
    cost[:, 0, :5] = float("inf")  # row 0 may only take column 5
    cols = OPS.linear_assignment(cost.to(CUDA), False)
    assert (cols[:, 0] == 5).all()
    torch.testing.assert_close(_total(cost, cols), _total(cost, OPS.linear_assignment(cost, False)))
    cost[1, 1, 5] = float("inf")
    cost[1, 1, :5] = float("inf")
    with pytest.raises(RuntimeError, match="no feasible assignment"):
        OPS.linear_assignment(cost.to(CUDA), False)
    nan = torch.rand(2, 4, 4, device=CUDA)
    nan[1, 2, 2] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        OPS.linear_assignment(nan, False)
    with pytest.raises(RuntimeError, match=r"\+inf"):
        OPS.linear_assignment(torch.full((1, 2, 2), float("inf"), device=CUDA), True)
    with pytest.raises(RuntimeError, match="n <= m"):
        OPS.linear_assignment(torch.rand(1, 5, 4, device=CUDA), False)
    assert OPS.linear_assignment(torch.rand(0, 3, 3, device=CUDA), False).shape == (0, 3)


def test_hard_permutation_matches_cpu_objective(dtype):
    s = _scores(32, 50, dtype)
    got = OPS.hard_permutation(s.to(CUDA))
    assert got.dtype == dtype and got.device.type == "cuda"
    assert (got.sum(-1) == 1).all() and (got.sum(-2) == 1).all()
    want = OPS.hard_permutation(s)
    torch.testing.assert_close((got.cpu() * s).sum((-1, -2)), (want * s).sum((-1, -2)))


@pytest.mark.parametrize("b,n", [(2, 5), (1, 24)])
def test_gradcheck_on_cuda_float64(b, n):
    s = torch.randn(b, n, n, dtype=torch.float64, device=CUDA, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: OPS.sinkhorn_project(x, 4, 0.7)[0], (s,))
    f0 = torch.randn(b, n, 3, dtype=torch.float64, device=CUDA, requires_grad=True)
    f1 = torch.randn(b, n, 3, dtype=torch.float64, device=CUDA, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: OPS.outer_sinkhorn_project(x, y, 3, 0.5)[0],
                                    (f0, f1))


def test_opcheck_on_cuda():
    s = torch.randn(2, 9, 9, device=CUDA)
    f0, f1 = torch.randn(2, 9, 4, device=CUDA), torch.randn(2, 9, 4, device=CUDA)
    _, row_pot, col_pot = OPS.sinkhorn_project(s, 3, 0.5)
    _, orow, ocol = OPS.outer_sinkhorn_project(f0, f1, 3, 0.5)
    p = OPS.sinkhorn_project(s, 50, 1.0)[0]
    cases = [
        (OPS.sinkhorn_project.default, (s.requires_grad_(), 3, 0.5)),
        (OPS.outer_sinkhorn_project.default, (f0.requires_grad_(), f1, 3, 0.5)),
        (OPS._sinkhorn_project_backward.default, (torch.randn_like(s), s.detach(), row_pot, col_pot, 3, 0.5)),
        (OPS._outer_sinkhorn_project_backward.default,
         (torch.randn_like(s), f0.detach(), f1, orow, ocol, 3, 0.5)),
        (OPS._sinkhorn_implicit_backward.default, (torch.randn_like(p), p, 1.0)),
        (OPS.linear_assignment.default, (s.detach(), True)),
        (OPS.hard_permutation.default, (s.detach(),)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_row_col_max_on_cuda_matches_the_cpu_kernel(dtype):
    # no CUDA kernel: CUDA tensors take the reference (torch.max with indices), same semantics
    w = torch.randn(3, 7, 5, 6, generator=torch.Generator().manual_seed(0), dtype=dtype)
    grads = []
    for device in ("cpu", CUDA):
        x = w.to(device, copy=True).requires_grad_()  # a leaf of its own on both devices
        rows, cols = ops.row_col_max(x)
        assert rows.device == x.device
        (rows.square().sum() + cols.sum()).backward()
        grads.append((rows.cpu(), cols.cpu(), x.grad.cpu()))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
