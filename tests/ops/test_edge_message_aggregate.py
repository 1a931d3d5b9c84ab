"""deepalign.ops.edge_message_aggregate against the gather/index_add reference: values,
gradients (its backward op), gradcheck, edge cases and bad input."""
import pytest
import torch

from deepalign import ops
from deepalign.ops import reference

OPS = torch.ops.deepalign


def _case(b, n, e, c, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_src, x_dst = (torch.randn(b, n, c, generator=gen, dtype=dtype) for _ in range(2))
    edge = torch.randn(b, e, c, generator=gen, dtype=dtype)
    src, dst = (torch.randint(0, max(n, 1), (e,), generator=gen) for _ in range(2))
    return x_src, x_dst, edge, src, dst


# (B, N, E, c): a batch, one network with many channels (channel-split tasks), a single node
# with self-loops, more nodes than edges (isolated nodes get zeros), and a wide batch
SHAPES = [(3, 7, 20, 5), (1, 9, 40, 67), (2, 1, 3, 4), (2, 30, 6, 3), (9, 5, 12, 16)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_reference(shape, dtype, tol):
    args = _case(*shape, dtype=dtype, seed=sum(shape))
    torch.testing.assert_close(ops.edge_message_aggregate(*args),
                               reference.edge_message_aggregate(*args), **tol)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradients_match_the_reference(shape, dtype, tol):
    args = _case(*shape, dtype=dtype, seed=1 + sum(shape))
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in
               reference.edge_message_aggregate(*args)]
    grads = []
    for fn in (reference.edge_message_aggregate, ops.edge_message_aggregate):
        leaves = [t.clone().requires_grad_() for t in args[:3]]
        outs = fn(*leaves, *args[3:])
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads.append([t.grad for t in leaves])
    torch.testing.assert_close(grads[1], grads[0], **tol)


def test_gradcheck_and_one_sided_gradients():
    x_src, x_dst, edge, src, dst = _case(2, 5, 11, 3, seed=7)
    leaves = [t.requires_grad_() for t in (x_src, x_dst, edge)]
    assert torch.autograd.gradcheck(lambda *t: ops.edge_message_aggregate(*t, src, dst), leaves)
    # only to_dst reaches the loss: the other outputs contribute zeros
    got = torch.autograd.grad(ops.edge_message_aggregate(*leaves, src, dst)[1].sum(), leaves)
    want = torch.autograd.grad(reference.edge_message_aggregate(*leaves, src, dst)[1].sum(),
                               leaves)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_backward_op_is_the_vector_jacobian_product():
    """Called directly (no autograd): the reference's VJP, for every incoming gradient."""
    args = _case(3, 6, 14, 5, seed=8)
    leaves = [t.clone().requires_grad_() for t in args[:3]]
    outs = reference.edge_message_aggregate(*leaves, *args[3:])
    gen = torch.Generator().manual_seed(9)
    grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    want = torch.autograd.grad(outs, leaves, grads)
    got = OPS._edge_message_aggregate_backward(*grads, *args)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(0, 4, 5, 3), (2, 4, 0, 3), (2, 0, 0, 3), (2, 4, 5, 0)])
def test_empty_inputs(shape, dtype):
    args = _case(*shape, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in args[:3]]
    outs = ops.edge_message_aggregate(*leaves, *args[3:])
    for got, want in zip(outs, reference.edge_message_aggregate(*args)):
        assert got.shape == want.shape and torch.equal(got, want)
    sum(o.sum() for o in outs).backward()
    assert all(t.grad.shape == t.shape for t in leaves)


def test_non_contiguous_inputs():
    x_src, x_dst, edge, src, dst = _case(3, 6, 10, 4, seed=3)
    args = (x_src.transpose(0, 1).contiguous().transpose(0, 1), x_dst,
            edge.flip(-1), src, dst.repeat(2)[::2])
    assert not args[0].is_contiguous() and not args[4].is_contiguous()
    torch.testing.assert_close(ops.edge_message_aggregate(*args),
                               reference.edge_message_aggregate(*args), rtol=0, atol=1e-12)


def test_no_autograd_path_returns_plain_tensors():
    leaves = [t.requires_grad_() for t in _case(2, 3, 4, 5)[:3]]
    with torch.no_grad():
        outs = ops.edge_message_aggregate(*leaves, *_case(2, 3, 4, 5)[3:])
    assert not any(o.requires_grad for o in outs)


@pytest.mark.parametrize("where", ["x_src", "x_dst", "edge"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_is_a_clear_error(where, value):
    x_src, x_dst, edge, src, dst = _case(2, 4, 8, 3, seed=2)
    src[:], dst[:] = torch.arange(8) % 4, (torch.arange(8) + 1) % 4  # every node is read
    {"x_src": x_src, "x_dst": x_dst, "edge": edge}[where][1, 2, 1] = value
    with pytest.raises(RuntimeError, match="network 1 holds NaN or inf"):
        ops.edge_message_aggregate(x_src, x_dst, edge, src, dst)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(src=a["src"] + 10), RuntimeError, r"src\[\d+\] = \d+ is outside"),
    (lambda a: a.update(dst=a["dst"] - 10), RuntimeError, r"dst\[\d+\] = -\d+ is outside"),
    (lambda a: a.update(src=a["src"][:-1]), ValueError, r"src must be int64 \(E,\)"),
    (lambda a: a.update(dst=a["dst"].int()), ValueError, "dst must be int64"),
    (lambda a: a.update(edge=a["edge"][:, :, :2]), ValueError, r"edge must be \(B, E, c\)"),
    (lambda a: a.update(x_dst=a["x_dst"][:1]), ValueError, "x_src and x_dst must both be"),
    (lambda a: a.update(x_dst=a["x_dst"].float()), TypeError, "x_dst must have x_src's dtype"),
    (lambda a: a.update(x_src=[[1.0]]), TypeError, "x_src must be a torch.Tensor"),
])
def test_bad_input_is_a_clear_error(change, error, match):
    args = dict(zip(("x_src", "x_dst", "edge", "src", "dst"), _case(2, 4, 6, 3)))
    change(args)
    with pytest.raises(error, match=match):
        ops.edge_message_aggregate(**args)


def test_kernel_checks_indices_itself():
    x_src, x_dst, edge, src, dst = _case(1, 3, 4, 2)
    src[2] = 3
    with pytest.raises(RuntimeError, match=r"src\[2\] = 3 is outside \[0, 3\)"):
        OPS.edge_message_aggregate(x_src, x_dst, edge, src, dst)
    with pytest.raises(RuntimeError, match="grad_msg must have edge's shape"):
        OPS._edge_message_aggregate_backward(edge[:, :1], x_src, x_src, x_src, x_dst, edge,
                                             dst, dst)


def test_fewer_networks_than_threads_split_the_channels():
    """B = 1 on two threads: each thread owns a channel range of the one network."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = _case(1, 9, 40, 67, seed=11)
        leaves = [t.clone().requires_grad_() for t in args[:3]]
        gen = torch.Generator().manual_seed(12)
        outs = reference.edge_message_aggregate(*leaves, *args[3:])
        grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
        torch.testing.assert_close(OPS.edge_message_aggregate(*args), outs, rtol=0, atol=1e-12)
        torch.testing.assert_close(OPS._edge_message_aggregate_backward(*grads, *args),
                                   torch.autograd.grad(outs, leaves, grads),
                                   rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(threads)
