"""Normalisation layers: per-feature statistics commute with permuting the features.

``layer_norm``/``rms_norm`` normalise over trailing axes: a permutation of those axes
permutes the output, and the affine weight and bias carry it too. ``batch_norm`` and
``instance_norm`` keep per-channel statistics (axis 1): running mean and variance are
permuted with the channels. ``group_norm`` shares statistics within groups of channels, so
channels move within their group and groups move whole (a block group of kind ``"groups"``).
"""
from __future__ import annotations

from deepalign.weightspace.tracing._registry import rule


def _tie_all(ctx, axis, *values) -> None:
    for value in values:
        layout = ctx.layout(value)
        if layout is not None:
            ctx.engine.tie(axis, layout[0])


@rule("aten::layer_norm", "aten::rms_norm")
def layer_norm(ctx):
    x = ctx.layout(ctx.arg(0))
    normalized = list(ctx.arg(1))
    k = len(normalized)
    for i in range(k):
        axis = x[len(x) - k + i]
        for value in (ctx.arg(2, "weight"), ctx.arg(3, "bias")):
            layout = ctx.layout(value)
            if layout is not None:
                ctx.engine.tie(axis, layout[i])
    return x


@rule("aten::batch_norm", "aten::instance_norm", "aten::_native_batch_norm_legit_no_training",
      "aten::_native_batch_norm_legit", "aten::native_batch_norm")
def batch_norm(ctx):
    x = ctx.layout(ctx.arg(0))
    _tie_all(ctx, x[1], *(ctx.arg(i) for i in range(1, 5)))
    if isinstance(ctx.node.meta.get("val"), (tuple, list)):  # (out, saved stats...)
        return [x] + [ctx.engine.fresh(t.shape) for t in ctx.node.meta["val"][1:]]
    return x


@rule("aten::group_norm")
def group_norm(ctx):
    x = ctx.layout(ctx.arg(0))
    groups = ctx.arg(1)
    _tie_all(ctx, x[1], ctx.arg(2, "weight"), ctx.arg(3, "bias"))
    if groups > 1:
        if len(x[1]) != 1 or x[1][0][0] != "a":
            ctx.fail("group_norm over channels that are not a plain axis")
        outer, _ = ctx.engine.split_equal(x[1][0][1], groups)
        ctx.engine.mark(outer, "groups", ctx.module)
    return x
