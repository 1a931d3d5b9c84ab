"""An eval-mode weight-space layer's entry term with its row and column pools, in one pass."""
import torch

from deepalign.ops import reference
from deepalign.ops._checks import needs_autograd
from deepalign.ops._extension import extension_loaded, require_extension

_OPS = torch.ops.deepalign
_KERNEL_DTYPES = (torch.float32, torch.float64)


def linear_relu_pool(w: torch.Tensor, weight: torch.Tensor, row_bias: torch.Tensor,
                     col_bias: torch.Tensor, reduction: str = "mean",
                     keep_output: bool = True) -> tuple:
    r"""``y = relu(w @ weight + row_bias[:, :, None] + col_bias[:, None])`` and its pools.

    The entry term of a weight-space layer whose BatchNorm and ReLU are folded in (eval mode),
    together with what the next layer reads of ``y``: its pool over each row and over each
    column. The CPU kernel computes each entry in registers, writes it once (or never, with
    ``keep_output=False``) and pools it on the spot, where ATen takes six passes over
    entry-sized tensors.

    Parameters
    ----------
    w : Tensor, (B, n, m, c_in)
    weight : Tensor, (c_in, c_out)
    row_bias : Tensor, (B, n, c_out)
        Added to every entry of row ``i``.
    col_bias : Tensor, (B, m, c_out)
        Added to every entry of column ``j``.
    reduction : {'mean', 'max'}
    keep_output : bool
        False: ``y`` itself is not returned (an empty tensor instead), only its pools.

    Returns
    -------
    y : Tensor, (B, n, m, c_out), or empty (0,) without ``keep_output``
    rows : Tensor, (B, n, c_out)
        ``y`` pooled over ``j``.
    cols : Tensor, (B, m, c_out)
        ``y`` pooled over ``i``.

    The kernel is CPU, float32/float64, and has no backward: calls that need a gradient, other
    dtypes and other devices run ``deepalign.ops.reference.linear_relu_pool`` (same values).
    """
    _check(w, weight, row_bias, col_bias, reduction)
    if (w.device.type != "cpu" or w.dtype not in _KERNEL_DTYPES
            or needs_autograd(w, weight, row_bias, col_bias)):
        return reference.linear_relu_pool(w, weight, row_bias, col_bias, reduction, keep_output)
    require_extension()
    with torch._C._AutoDispatchBelowAutograd():
        return _OPS.linear_relu_pool(w, weight, row_bias, col_bias, reduction, keep_output)


def _check(w, weight, row_bias, col_bias, reduction) -> None:
    named = {"w": w, "weight": weight, "row_bias": row_bias, "col_bias": col_bias}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != w.dtype or x.device != w.device:
            raise TypeError(f"{name} must have w's dtype and device ({w.dtype}, {w.device}), "
                            f"got {x.dtype} on {x.device}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {w.dtype}")
    if w.dim() != 4 or w.shape[1] == 0 or w.shape[2] == 0:
        raise ValueError(f"w must be (B, n, m, c_in) with n, m >= 1, got shape {tuple(w.shape)}")
    b, n, m, c_in = w.shape
    if weight.dim() != 2 or weight.shape[0] != c_in or weight.shape[1] == 0:
        raise ValueError(f"weight must be (c_in, c_out) with c_in = {c_in} and c_out >= 1, got "
                         f"shape {tuple(weight.shape)}")
    c_out = weight.shape[1]
    for name, x, shape in (("row_bias", row_bias, (b, n, c_out)),
                           ("col_bias", col_bias, (b, m, c_out))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if reduction not in ("mean", "max"):
        raise ValueError(f"reduction must be 'mean' or 'max', got {reduction!r}")


def _fake(w, weight, row_bias, col_bias, reduction, keep_output):
    b, n, m, _ = w.shape
    c_out = weight.shape[1]
    out = w.new_empty(b, n, m, c_out) if keep_output else w.new_empty(0)
    return out, w.new_empty(b, n, c_out), w.new_empty(b, m, c_out)


def _no_backward(ctx, *grads):
    raise RuntimeError("deepalign::linear_relu_pool has no backward: call "
                       "deepalign.ops.linear_relu_pool, which takes the differentiable "
                       "reference when a gradient is needed")


def _register() -> None:
    torch.library.register_fake("deepalign::linear_relu_pool")(_fake)
    # registered so that a gradient through the raw op is an error, not silently zero
    torch.library.register_autograd("deepalign::linear_relu_pool", _no_backward)


if extension_loaded():
    _register()
