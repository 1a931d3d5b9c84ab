"""Reductions and axis-wise normalisers.

Summing, averaging or taking the maximum over an axis is invariant to permuting it, so a
reduced axis simply disappears (or becomes size 1). A reduced head axis would mix the head
blocks of a remaining head-dim axis; the engine pins such orphaned inner parts. ``softmax``
along an axis is equivariant: the layout passes through. ``cumsum`` depends on the order
along its axis and pins it; ``max`` over a dim returns indices along it and pins it too.
"""
from __future__ import annotations

from deepalign.weightspace.tracing._registry import rule
from deepalign.weightspace.tracing._rules.elementwise import broadcast_tie


def _dims(ctx, rank: int, index: int) -> list:
    dims = ctx.arg(index, "dim")
    if dims is None or dims == []:
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted({d % rank for d in dims})


def _reduce(ctx, keepdim_index: int, dim_index: int = 1):
    x = ctx.layout(ctx.arg(0))
    dims = _dims(ctx, len(x), dim_index)
    keep = ctx.arg(keepdim_index, "keepdim", False)
    out = []
    for i, axis in enumerate(x):
        if i not in dims:
            out.append(axis)
        elif keep:
            out.append((("a", ctx.engine.var(1)),))
    return tuple(out)


@rule("aten::mean", "aten::sum", "aten::amax", "aten::amin", "aten::logsumexp", "aten::prod",
      "aten::norm", "aten::linalg_vector_norm", "aten::all", "aten::any")
def reduce(ctx):
    if ctx.node.target._schema.name in ("aten::norm", "aten::linalg_vector_norm"):
        return _reduce(ctx, 3, dim_index=2)  # norm(x, p, dim, keepdim)
    return _reduce(ctx, 2)


@rule("aten::var", "aten::std", "aten::var_mean", "aten::std_mean")
def moments(ctx):
    out = _reduce(ctx, 3)
    if isinstance(ctx.node.meta.get("val"), (tuple, list)):
        return [out, out]
    return out


@rule("aten::max", "aten::min")
def max_dim(ctx):
    x = ctx.layout(ctx.arg(0))
    if not isinstance(ctx.arg(1), int):  # max(x) or max(x, y)
        if len(ctx.tensor_args()) > 1:
            return broadcast_tie(ctx, ctx.tensor_args())
        return ()
    dim = ctx.arg(1) % len(x)
    ctx.engine.fix_layout(x[dim:dim + 1])  # the indices address positions along dim
    out = _reduce(ctx, 2)
    return [out, out]


@rule("aten::softmax", "aten::_softmax", "aten::log_softmax", "aten::_log_softmax",
      "aten::_safe_softmax")
def softmax(ctx):
    return ctx.layout(ctx.arg(0))


@rule("aten::cumsum", "aten::cumprod")
def cumulative(ctx):
    x = ctx.layout(ctx.arg(0))
    dim = ctx.arg(1, "dim") % len(x)
    ctx.engine.fix_layout(x[dim:dim + 1])  # the result depends on the order along dim
    return x
