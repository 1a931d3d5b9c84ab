"""Row and column max-pooling of a batch of matrices with channels (the encoder's pools)."""
import torch

from deepalign.ops import reference
from deepalign.ops._checks import needs_autograd
from deepalign.ops._extension import extension_loaded, require_extension

_OPS = torch.ops.deepalign


def row_col_max(w: torch.Tensor) -> tuple:
    r"""Max of ``w`` over each row and over each column, in one pass.

    ``rows[b, i, k] = max_j w[b, i, j, k]`` and ``cols[b, j, k] = max_i w[b, i, j, k]``, as
    ``(w.amax(2), w.amax(1))`` but reading ``w`` once; the backward scatters each pooled value's
    gradient to its argmax (the first on ties, as ``torch.max``) instead of comparing every
    entry again. NaN propagates.

    Parameters
    ----------
    w : Tensor, shape (B, n, m, c)
        Floating point (float32, float64, bfloat16, float16), n, m >= 1.

    Returns
    -------
    rows : Tensor, (B, n, c)
    cols : Tensor, (B, m, c)

    The CPU kernel is compiled; other devices use ``deepalign.ops.reference.row_col_max``
    (``torch.max`` with indices), which has the same values and gradient.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {w.dtype}")
    if w.dim() != 4 or w.shape[1] == 0 or w.shape[2] == 0:
        raise ValueError(f"w must be (B, n, m, c) with n, m >= 1, got shape {tuple(w.shape)}")
    if w.device.type != "cpu":
        return reference.row_col_max(w)
    require_extension()
    if not needs_autograd(w):
        with torch._C._AutoDispatchBelowAutograd():
            return _OPS.row_col_max(w)[:2]
    return _OPS.row_col_max(w)[:2]


def _fake(w):
    b, n, m, c = w.shape
    return (w.new_empty(b, n, c), w.new_empty(b, m, c),
            w.new_empty(b, n, c, dtype=torch.long), w.new_empty(b, m, c, dtype=torch.long))


def _setup(ctx, inputs, output):
    _, _, row_idx, col_idx = output
    ctx.mark_non_differentiable(row_idx, col_idx)
    ctx.save_for_backward(row_idx, col_idx)
    ctx.dtype = output[0].dtype


def _backward(ctx, grad_rows, grad_cols, _grad_row_idx, _grad_col_idx):
    row_idx, col_idx = ctx.saved_tensors
    # a pool the loss does not reach has no gradient: it scatters zeros
    if grad_rows is None:
        grad_rows = torch.zeros_like(row_idx, dtype=ctx.dtype)
    if grad_cols is None:
        grad_cols = torch.zeros_like(col_idx, dtype=ctx.dtype)
    return _OPS._row_col_max_backward(grad_rows, grad_cols, row_idx, col_idx)


def _register() -> None:
    torch.library.register_fake("deepalign::row_col_max")(_fake)
    torch.library.register_fake("deepalign::_row_col_max_backward")(
        lambda grad_rows, grad_cols, row_idx, col_idx: grad_rows.new_empty(
            grad_rows.shape[0], grad_rows.shape[1], grad_cols.shape[1], grad_rows.shape[2]))
    torch.library.register_autograd("deepalign::row_col_max", _backward, setup_context=_setup)


if extension_loaded():
    _register()
