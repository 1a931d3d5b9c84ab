"""deepalign.ops.row_col_max against the torch.max reference: values, argmax (ties, NaN, -inf),
gradients, gradcheck and bad input."""
import pytest
import torch

from deepalign import ops
from deepalign.ops import reference

OPS = torch.ops.deepalign


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (2, 1, 9, 33), (1, 12, 1, 1), (4, 32, 64, 16)])
def test_values_and_indices_match_torch_max(dtype, shape):
    w = _randn(*shape, seed=sum(shape)).to(dtype)
    rows, cols, row_idx, col_idx = OPS.row_col_max(w)
    r = w.max(dim=2)
    c = w.max(dim=1)
    assert torch.equal(rows, r.values) and torch.equal(cols, c.values)
    assert torch.equal(row_idx, r.indices) and torch.equal(col_idx, c.indices)
    assert rows.dtype == dtype and row_idx.dtype == torch.long


def test_ties_go_to_the_first_index_and_gradients_match_the_reference():
    # small integers: many ties per row and column
    w = torch.randint(0, 3, (3, 6, 5, 4), generator=torch.Generator().manual_seed(1)).double()
    w_ref = w.clone().requires_grad_()
    w_op = w.clone().requires_grad_()
    g_rows, g_cols = _randn(3, 6, 4, seed=2), _randn(3, 5, 4, seed=3)
    ref_rows, ref_cols = reference.row_col_max(w_ref)
    rows, cols = ops.row_col_max(w_op)
    torch.testing.assert_close((rows, cols), (ref_rows, ref_cols), rtol=0, atol=0)
    ((ref_rows * g_rows).sum() + (ref_cols * g_cols).sum()).backward()
    ((rows * g_rows).sum() + (cols * g_cols).sum()).backward()
    torch.testing.assert_close(w_op.grad, w_ref.grad, rtol=0, atol=0)


def test_nan_propagates_and_minus_inf_is_a_value():
    w = _randn(2, 4, 5, 3)
    w[0, 1, 2, 0] = float("nan")
    w[1] = float("-inf")
    rows, cols, row_idx, col_idx = OPS.row_col_max(w)
    assert torch.isnan(rows[0, 1, 0]) and row_idx[0, 1, 0] == 2
    assert torch.isnan(cols[0, 2, 0]) and col_idx[0, 2, 0] == 1
    assert torch.isfinite(rows[0, [0, 2, 3]]).all()
    assert torch.equal(rows[1], torch.full((4, 3), float("-inf"), dtype=w.dtype))
    assert torch.equal(row_idx[1], torch.zeros(4, 3, dtype=torch.long))


def test_gradcheck_and_one_sided_gradients():
    w = _randn(2, 5, 4, 3, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(ops.row_col_max, (w,))
    # only the row pool reaches the loss: the column pool contributes nothing
    rows, _ = ops.row_col_max(w)
    (grad,) = torch.autograd.grad(rows.sum(), w)
    expected = torch.zeros_like(w).scatter_(2, w.detach().argmax(2, keepdim=True), 1.0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_bfloat16_gradient_equals_the_reference():
    w = _randn(4, 8, 6, 16, seed=5).to(torch.bfloat16)
    g_rows, g_cols = (_randn(4, 8, 16, seed=6).bfloat16(), _randn(4, 6, 16, seed=7).bfloat16())
    grads = []
    for fn in (reference.row_col_max, ops.row_col_max):
        x = w.clone().requires_grad_()
        rows, cols = fn(x)
        ((rows * g_rows).float().sum() + (cols * g_cols).float().sum()).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_non_contiguous_input():
    w = _randn(3, 5, 6, 4, seed=8).transpose(1, 2)  # (3, 6, 5, 4), not contiguous
    rows, cols = ops.row_col_max(w)
    torch.testing.assert_close((rows, cols), reference.row_col_max(w), rtol=0, atol=0)


def test_no_autograd_path_returns_plain_tensors():
    w = _randn(2, 3, 4, 5, seed=9).requires_grad_()
    with torch.no_grad():
        rows, cols = ops.row_col_max(w)
    assert not rows.requires_grad and not cols.requires_grad


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(3, 4, 5), ValueError, r"w must be \(B, n, m, c\)"),
    (torch.zeros(2, 0, 4, 3), ValueError, "n, m >= 1"),
    (torch.zeros(2, 3, 4, 3, dtype=torch.long), TypeError, "floating-point"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_input_is_a_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        ops.row_col_max(bad)


def test_backward_rejects_indices_out_of_range():
    g_rows, g_cols = _randn(1, 2, 3), _randn(1, 4, 3)
    row_idx = torch.zeros(1, 2, 3, dtype=torch.long)
    col_idx = torch.zeros(1, 4, 3, dtype=torch.long)
    row_idx[0, 1, 2] = 4  # m = 4 columns: valid indices are 0..3
    with pytest.raises(RuntimeError, match=r"row_idx holds 4, outside \[0, 4\)"):
        OPS._row_col_max_backward(g_rows, g_cols, row_idx, col_idx)
    with pytest.raises(RuntimeError, match="row_idx must have grad_rows' shape"):
        OPS._row_col_max_backward(g_rows, g_cols, row_idx[:, :1], col_idx)
