"""Convolutions and pooling over spatial axes.

A convolution mixes channels like ``Linear`` (weight axis 1 reads the input channels, axis 0
writes the output channels) while its kernel taps and the spatial axes are never permuted.
With ``groups = G`` output channels of group ``g`` read only input channels of group ``g``:
whole groups may move together in input and output, and channels move within their group
(a block group of kind ``"groups"``, the weight's input axis a ``GroupedAxis``). A depthwise
convolution (``groups`` = channels) is per-channel and passes the channel perm through.
Pooling acts on each channel separately.
"""
from __future__ import annotations

from deepalign.weightspace.tracing._registry import rule


def _conv(ctx, x, weight, bias, groups: int, channel_axis: int):
    engine = ctx.engine
    out_shape = ctx.out_shape()
    for axis in weight[2:]:  # kernel taps
        engine.fix_layout((axis,))
    channels = x[channel_axis]
    c_in = engine.axis_size(channels)
    c_out = engine.axis_size(weight[0])
    if groups == 1:
        engine.tie(channels, weight[1])
        out_channels = weight[0]
    elif groups == c_in and c_out == c_in:  # depthwise: one filter per channel
        engine.tie(channels, weight[0])
        out_channels = channels
    else:
        if len(channels) != 1 or channels[0][0] != "a":
            ctx.fail("a grouped convolution whose input channels are not a plain axis")
        v_in, v_out, v_w = channels[0][1], weight[0][0][1], weight[1][0][1]
        outer_in, _ = engine.split_equal(v_in, groups)
        outer_out, _ = engine.split_equal(v_out, groups)
        engine.union(outer_in, outer_out)
        engine.mark(outer_in, "groups", ctx.module)
        ctx.grouped = {v_w: v_in}
        out_channels = weight[0]
    if bias is not None:
        engine.tie(bias[0], weight[0])
    spatial = engine.fresh(out_shape[channel_axis + 1:], fixed=True)
    return x[:channel_axis] + (out_channels,) + spatial


@rule("aten::conv1d", "aten::conv2d", "aten::conv3d")
def conv(ctx):
    x, weight = ctx.layout(ctx.arg(0)), ctx.layout(ctx.arg(1))
    bias = ctx.layout(ctx.arg(2, "bias"))
    groups = ctx.arg(6, "groups", 1)
    channel_axis = len(x) - (len(weight) - 1)  # unbatched inputs have no batch axis
    return _conv(ctx, x, weight, bias, groups, channel_axis)


@rule("aten::convolution", "aten::_convolution")
def convolution(ctx):
    if ctx.arg(6, "transposed", False):
        ctx.fail("transposed convolutions have no rule yet")
    x, weight = ctx.layout(ctx.arg(0)), ctx.layout(ctx.arg(1))
    return _conv(ctx, x, weight, ctx.layout(ctx.arg(2, "bias")), ctx.arg(8, "groups", 1),
                 len(x) - (len(weight) - 1))


POOLS = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "avg_pool1d": 1, "avg_pool2d": 2,
         "avg_pool3d": 3, "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2,
         "adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2,
         "adaptive_max_pool3d": 3, "max_pool2d_with_indices": 2, "_adaptive_avg_pool2d": 2,
         "lp_pool2d": 2, "upsample_nearest2d": 2, "upsample_bilinear2d": 2}


@rule(*(f"aten::{name}" for name in POOLS))
def pool(ctx):
    x = ctx.layout(ctx.arg(0))
    k = POOLS[ctx.node.target._schema.name.split("::")[1]]
    val = ctx.node.meta["val"]
    shape = tuple((val[0] if isinstance(val, (tuple, list)) else val).shape)
    ctx.engine.fix_layout(x[len(x) - k:])
    layout = x[:len(x) - k] + ctx.engine.fresh(shape[len(x) - k:], fixed=True)
    if isinstance(val, (tuple, list)):  # (values, indices): indices are per channel too
        return [layout, layout]
    return layout


@rule("aten::constant_pad_nd", "aten::pad", "aten::reflection_pad1d", "aten::reflection_pad2d",
      "aten::reflection_pad3d", "aten::replication_pad1d", "aten::replication_pad2d",
      "aten::replication_pad3d", "aten::circular_pad1d", "aten::circular_pad2d")
def pad(ctx):
    # padding the last k axes shifts positions along them: those are pinned (spatial
    # axes usually are), the leading axes (channels) pass through
    x = ctx.layout(ctx.arg(0))
    k = len(ctx.arg(1)) // 2
    ctx.engine.fix_layout(x[len(x) - k:])
    return x[:len(x) - k] + ctx.engine.fresh(ctx.out_shape()[len(x) - k:], fixed=True)
