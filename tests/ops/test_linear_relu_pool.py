"""deepalign.ops.linear_relu_pool against the pure-PyTorch reference: values and pools (mean,
max, channel tails, NaN), the output-free variant, the gradient path, and bad input."""
import pytest
import torch

from deepalign import ops
from deepalign.ops import reference

OPS = torch.ops.deepalign


def _inputs(b, n, m, c_in, c_out, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    return draw(b, n, m, c_in), draw(c_in, c_out), draw(b, n, c_out), draw(b, m, c_out)


# c_out covers one partial vector, whole vectors, channel blocks of 2 (AVX2) or 4 (AVX-512)
# vectors and tails of 1-3 vectors (float32 vectors hold 8 lanes, float64 4); m covers the entry
# groups of 4 and their remainder
SHAPES = [(3, 5, 7, 1, 32), (2, 4, 9, 9, 17), (1, 3, 3, 32, 33), (4, 6, 5, 3, 64),
          (2, 1, 1, 2, 1), (2, 7, 8, 5, 40), (2, 5, 6, 4, 44), (1, 2, 9, 7, 24)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_matches_the_reference(dtype, shape, reduction):
    args = _inputs(*shape, dtype=dtype, seed=sum(shape))
    got = OPS.linear_relu_pool(*args, reduction, True)
    want = reference.linear_relu_pool(*(a.double() for a in args), reduction, True)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert (got[0] >= 0).all()


def test_pools_alone_equal_the_pools_with_output():
    args = _inputs(3, 6, 10, 4, 20, seed=1)
    out, rows, cols = OPS.linear_relu_pool(*args, "mean", False)
    assert out.shape == (0,)
    _, rows_kept, cols_kept = OPS.linear_relu_pool(*args, "mean", True)
    assert torch.equal(rows, rows_kept) and torch.equal(cols, cols_kept)


def test_nan_propagates_like_the_reference():
    w, weight, row_bias, col_bias = _inputs(2, 4, 5, 3, 8, seed=2)
    w[0, 1, 2, 0] = float("nan")
    for reduction in ("mean", "max"):
        out, rows, cols = ops.linear_relu_pool(w, weight, row_bias, col_bias, reduction)
        assert torch.isnan(out[0, 1, 2]).all() and torch.isnan(rows[0, 1]).all()
        assert torch.isnan(cols[0, 2]).all()
        assert not torch.isnan(rows[0, [0, 2, 3]]).any() and not torch.isnan(out[1]).any()


def test_non_contiguous_inputs():
    w, weight, row_bias, col_bias = _inputs(3, 6, 5, 4, 7, seed=3)
    w_t = w.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    got = ops.linear_relu_pool(w_t, weight.T.contiguous().T, row_bias, col_bias, "max")
    want = reference.linear_relu_pool(w, weight, row_bias, col_bias, "max")
    for g, x in zip(got, want):
        torch.testing.assert_close(g, x)


def test_gradients_take_the_reference_and_the_raw_op_has_none():
    args = [a.requires_grad_() for a in _inputs(2, 3, 4, 2, 5, seed=4)]
    assert torch.autograd.gradcheck(
        lambda *xs: ops.linear_relu_pool(*xs, "mean")[1:], args)
    out, rows, _ = OPS.linear_relu_pool(*args, "mean", True)
    with pytest.raises(RuntimeError, match="has no backward"):
        rows.sum().backward()


def test_wrapper_uses_the_kernel_without_gradients():
    args = _inputs(2, 3, 4, 2, 5, seed=5)
    with torch.no_grad():
        got = ops.linear_relu_pool(*[a.requires_grad_() for a in args], "max")
    for g, x in zip(got, OPS.linear_relu_pool(*args, "max", True)):
        assert torch.equal(g, x) and not g.requires_grad


@pytest.mark.parametrize("change, error, match", [
    (lambda a: (a[0][0],) + a[1:], ValueError, r"w must be \(B, n, m, c_in\)"),
    (lambda a: (a[0][:, :0],) + a[1:], ValueError, "n, m >= 1"),
    (lambda a: (a[0], a[1][:1]) + a[2:], ValueError, r"weight must be \(c_in, c_out\)"),
    (lambda a: a[:2] + (a[2][:, :2],) + a[3:], ValueError, "row_bias must have shape"),
    (lambda a: a[:3] + (a[3][:1],), ValueError, "col_bias must have shape"),
    (lambda a: (a[0], a[1].float()) + a[2:], TypeError, "weight must have w's dtype"),
    (lambda a: (a[0].long(),) + tuple(x.long() for x in a[1:]), TypeError, "floating-point"),
    (lambda a: (a[0].tolist(),) + a[1:], TypeError, "w must be a torch.Tensor"),
])
def test_bad_input_is_a_clear_error(change, error, match):
    args = change(_inputs(2, 3, 4, 2, 5))
    with pytest.raises(error, match=match):
        ops.linear_relu_pool(*args)


def test_bad_reduction_is_a_clear_error_in_the_wrapper_and_the_kernel():
    args = _inputs(2, 3, 4, 2, 5)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'max'"):
        ops.linear_relu_pool(*args, "sum")
    with pytest.raises(RuntimeError, match="reduction must be 'mean' or 'max'"):
        OPS.linear_relu_pool(*args, "sum", True)
    with pytest.raises(RuntimeError, match="row_bias must be"):
        OPS.linear_relu_pool(args[0], args[1], args[2][:, :1], args[3], "mean", True)
