"""One message-passing step over a weight-space graph: edge update and per-node sums, fused."""
import torch

from deepalign.ops import reference
from deepalign.ops._checks import needs_autograd
from deepalign.ops._extension import extension_loaded, require_extension

_OPS = torch.ops.deepalign
_KERNEL_DTYPES = (torch.float32, torch.float64)


def edge_message_aggregate(x_src: torch.Tensor, x_dst: torch.Tensor, edge: torch.Tensor,
                           src: torch.Tensor, dst: torch.Tensor) -> tuple:
    _check(x_src, x_dst, edge, src, dst)
    if x_src.device.type != "cpu" or x_src.dtype not in _KERNEL_DTYPES:
        return reference.edge_message_aggregate(x_src, x_dst, edge, src, dst)
    require_extension()
    if not needs_autograd(x_src, x_dst, edge):
        with torch._C._AutoDispatchBelowAutograd():
            return _OPS.edge_message_aggregate(x_src, x_dst, edge, src, dst)
    return _OPS.edge_message_aggregate(x_src, x_dst, edge, src, dst)


edge_message_aggregate.__doc__ = reference.EDGE_MESSAGE_DOC + """
    The CPU kernel (float32, float64) reads each edge once and writes its message once; other
    dtypes and devices run ``deepalign.ops.reference.edge_message_aggregate`` (same values).
    Its backward is the op ``deepalign::_edge_message_aggregate_backward``, which recomputes
    the ReLU mask instead of storing it.
"""


def _check(x_src, x_dst, edge, src, dst) -> None:
    named = {"x_src": x_src, "x_dst": x_dst, "edge": edge, "src": src, "dst": dst}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device != x_src.device:
            raise TypeError(f"{name} must be on x_src's device {x_src.device}, got {x.device}")
    if not x_src.is_floating_point():
        raise TypeError(f"x_src must be a floating-point tensor, got {x_src.dtype}")
    for name, x in (("x_dst", x_dst), ("edge", edge)):
        if x.dtype != x_src.dtype:
            raise TypeError(f"{name} must have x_src's dtype {x_src.dtype}, got {x.dtype}")
    if x_src.dim() != 3 or x_dst.shape != x_src.shape:
        raise ValueError(f"x_src and x_dst must both be (B, N, c), got shapes "
                         f"{tuple(x_src.shape)} and {tuple(x_dst.shape)}")
    b, _, c = x_src.shape
    if edge.dim() != 3 or edge.shape[0] != b or edge.shape[2] != c:
        raise ValueError(f"edge must be (B, E, c) with B = {b}, c = {c}, got shape "
                         f"{tuple(edge.shape)}")
    for name, x in (("src", src), ("dst", dst)):
        if x.dtype != torch.int64 or x.shape != (edge.shape[1],):
            raise ValueError(f"{name} must be int64 (E,) with E = {edge.shape[1]}, got "
                             f"{x.dtype} {tuple(x.shape)}")


def _fake(x_src, x_dst, edge, src, dst):
    return edge.new_empty(edge.shape), x_src.new_empty(x_src.shape), x_src.new_empty(x_src.shape)


def _fake_backward(grad_msg, grad_to_dst, grad_to_src, x_src, x_dst, edge, src, dst):
    return x_src.new_empty(x_src.shape), x_src.new_empty(x_src.shape), edge.new_empty(edge.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_msg, grad_to_dst, grad_to_src):
    x_src, x_dst, edge, src, dst = ctx.saved_tensors
    # an output the loss does not reach has no gradient: it contributes zeros
    if grad_msg is None:
        grad_msg = torch.zeros_like(edge)
    if grad_to_dst is None:
        grad_to_dst = torch.zeros_like(x_src)
    if grad_to_src is None:
        grad_to_src = torch.zeros_like(x_src)
    g_src, g_dst, g_edge = _OPS._edge_message_aggregate_backward(
        grad_msg, grad_to_dst, grad_to_src, x_src, x_dst, edge, src, dst)
    return g_src, g_dst, g_edge, None, None


def _register() -> None:
    torch.library.register_fake("deepalign::edge_message_aggregate")(_fake)
    torch.library.register_fake("deepalign::_edge_message_aggregate_backward")(_fake_backward)
    torch.library.register_autograd("deepalign::edge_message_aggregate", _backward,
                                    setup_context=_setup)


if extension_loaded():
    _register()
