"""Every deepalign op passes torch.library.opcheck (schema, fake, autograd registration) and the
public wrappers work under torch.compile(fullgraph=True)."""
import pytest
import torch

from deepalign import ops

OPS = torch.ops.deepalign


def _randn(*shape, dtype=torch.float64, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)


def _opcheck_cases(dtype):
    s = _randn(2, 5, 5, dtype=dtype, requires_grad=True)
    f0 = _randn(2, 5, 3, dtype=dtype, requires_grad=True, seed=1)
    f1 = _randn(2, 5, 3, dtype=dtype, requires_grad=True, seed=2)
    grad = _randn(2, 5, 5, dtype=dtype, seed=3)
    _, row_pot, col_pot = OPS.sinkhorn_project(s.detach(), 4, 0.5)
    _, orow, ocol = OPS.outer_sinkhorn_project(f0.detach(), f1.detach(), 4, 0.5)
    p = OPS.sinkhorn_project(s.detach(), 50, 1.0)[0]
    w = _randn(2, 4, 3, 5, dtype=dtype, requires_grad=True, seed=4)
    _, _, row_idx, col_idx = OPS.row_col_max(w.detach())
    node_terms = [_randn(2, 4, 3, dtype=dtype, requires_grad=True, seed=s) for s in (10, 11)]
    edge = _randn(2, 7, 3, dtype=dtype, requires_grad=True, seed=15)
    src, dst = torch.tensor([0, 1, 2, 3, 0, 0, 2]), torch.tensor([1, 1, 3, 0, 2, 0, 2])
    return [
        (OPS.sinkhorn_project, (s, 4, 0.5)),
        (OPS.sinkhorn_project, (s, 0, 1.0)),
        (OPS.outer_sinkhorn_project, (f0, f1, 4, 0.5)),
        (OPS._sinkhorn_project_backward, (grad, s.detach(), row_pot, col_pot, 4, 0.5)),
        (OPS._outer_sinkhorn_project_backward,
         (grad, f0.detach(), f1.detach(), orow, ocol, 4, 0.5)),
        (OPS._sinkhorn_implicit_backward, (grad, p, 1.0)),
        (OPS.linear_assignment, (_randn(3, 4, 6, dtype=dtype), False)),
        (OPS.linear_assignment, (_randn(3, 4, 4, dtype=dtype), True)),
        (OPS.hard_permutation, (_randn(3, 4, 4, dtype=dtype),)),
        (OPS.row_col_max, (w,)),
        (OPS._row_col_max_backward, (_randn(2, 4, 5, dtype=dtype, seed=5),
                                     _randn(2, 3, 5, dtype=dtype, seed=6), row_idx, col_idx)),
        # inference only: its registered backward raises, so no input requires a gradient
        (OPS.linear_relu_pool, (w.detach(), _randn(5, 6, dtype=dtype, seed=7),
                                _randn(2, 4, 6, dtype=dtype, seed=8),
                                _randn(2, 3, 6, dtype=dtype, seed=9), "mean", True)),
        (OPS.linear_relu_pool, (w.detach(), _randn(5, 6, dtype=dtype, seed=7),
                                _randn(2, 4, 6, dtype=dtype, seed=8),
                                _randn(2, 3, 6, dtype=dtype, seed=9), "max", False)),
        (OPS.edge_message_aggregate, (*node_terms, edge, src, dst)),
        (OPS._edge_message_aggregate_backward,
         (_randn(2, 7, 3, dtype=dtype, seed=12), _randn(2, 4, 3, dtype=dtype, seed=13),
          _randn(2, 4, 3, dtype=dtype, seed=14), *(t.detach() for t in node_terms),
          edge.detach(), src, dst)),
    ]


@pytest.mark.parametrize("case", range(15))
def test_opcheck(case, dtype):
    op, args = _opcheck_cases(dtype)[case]
    torch.library.opcheck(op, args)


def test_every_op_is_covered_by_opcheck():
    covered = {op.default.name().split("::")[1] for op, _ in _opcheck_cases(torch.float64)}
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("deepalign::")}
    assert covered == registered


@pytest.mark.slow
def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()

    def loss(scores, f0, f1):
        p = ops.sinkhorn_project(scores, 6, 0.5)
        q = ops.outer_sinkhorn_project(f0, f1, 6, 0.5)
        r = ops.sinkhorn_project(scores, 30, 1.0, grad_mode="implicit")
        hard = ops.hard_permutation(p)
        cols = ops.linear_assignment(q, maximize=True)
        return (p * q).sum() + r.square().sum() + (hard * p).sum(), cols

    args = (_randn(2, 6, 6, requires_grad=True), _randn(2, 6, 3, requires_grad=True, seed=1),
            _randn(2, 6, 3, requires_grad=True, seed=2))
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_args = [a.detach().clone().requires_grad_() for a in args]
    got, got_cols = compiled(*args)
    want, want_cols = loss(*eager_args)
    torch.testing.assert_close(got, want)
    assert torch.equal(got_cols, want_cols)
    got.backward()
    want.backward()
    for a, b in zip(args, eager_args):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.slow
def test_compile_with_inductor_and_dynamic_shapes():
    torch._dynamo.reset()
    # Only extern kernels in the graph: inductor needs no C++ compile, the test stays quick.
    def round_plan(s):
        return ops.hard_permutation(ops.sinkhorn_project(s, 5))

    fn = torch.compile(round_plan, fullgraph=True, dynamic=True)
    for n in (4, 7):
        s = _randn(3, n, n, dtype=torch.float32)
        assert torch.equal(fn(s), round_plan(s))
