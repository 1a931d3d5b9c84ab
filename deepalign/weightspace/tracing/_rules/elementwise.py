"""Elementwise ops: unary functions keep the layout, n-ary ops tie broadcast-aligned axes.

Applying the same permutation to every operand of an elementwise op permutes its output, so
operands whose axes line up after broadcasting must carry the same permutation (a residual
addition ties the two streams; ``x * gate`` ties the gate to the channels it scales). A size-1
axis broadcasts a single value and constrains nothing. Constant tensors (``zeros``, ``ones``,
``full``) are invariant under every permutation; ``arange`` is not.
"""
from __future__ import annotations

from deepalign.weightspace.tracing._registry import rule

UNARY = ("relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "hardsigmoid", "hardswish",
         "hardtanh", "relu6", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "erf",
         "exp", "log", "log1p", "sin", "cos", "neg", "abs", "sqrt", "rsqrt", "reciprocal",
         "square", "sign", "floor", "ceil", "round", "clamp", "clamp_min", "clamp_max",
         "dropout", "feature_dropout", "alpha_dropout", "clone", "contiguous", "detach",
         "alias", "lift_fresh_copy", "to", "_to_copy", "logical_not", "bitwise_not",
         "isnan", "isinf", "isfinite", "nan_to_num", "pow", "float_power", "silu_",
         "gelu_", "sigmoid_", "tanh_", "hardswish_", "hardsigmoid_")
NARY = ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "maximum",
        "minimum", "fmax", "fmin", "atan2", "eq", "ne", "lt", "le", "gt", "ge", "__and__",
        "__or__", "__xor__", "bitwise_and", "bitwise_or", "bitwise_xor", "logical_and",
        "logical_or", "logical_xor", "where", "masked_fill", "masked_fill_", "lerp",
        "addcmul", "addcdiv", "copysign", "remainder", "fmod", "floor_divide")


def broadcast_tie(ctx, operands) -> tuple:
    """Tie the right-aligned axes of ``operands`` (graph values) and return the output
    layout (``ctx.out_shape()``)."""
    out_shape = ctx.out_shape()
    engine = ctx.engine
    layouts = [(ctx.layout(a), ctx.shape(a)) for a in operands]
    layouts = [(lay, shape) for lay, shape in layouts if lay is not None and shape is not None]
    out = []
    for axis in range(len(out_shape)):
        back = len(out_shape) - axis
        present = [lay[len(shape) - back] for lay, shape in layouts
                   if len(shape) >= back and shape[len(shape) - back] == out_shape[axis]]
        if out_shape[axis] == 1 or not present:
            out.append((("a", engine.var(out_shape[axis])),))
            continue
        for other in present[1:]:
            engine.tie(present[0], other)
        out.append(present[0])
    return tuple(out)


@rule(*(f"aten::{name}" for name in UNARY))
def unary(ctx):
    source = ctx.arg(0)
    layout = ctx.layout(source)
    if layout is None or ctx.shape(source) != ctx.out_shape() or len(ctx.tensor_args()) > 1:
        return broadcast_tie(ctx, ctx.tensor_args())
    return layout


@rule(*(f"aten::{name}" for name in NARY))
def nary(ctx):
    return broadcast_tie(ctx, ctx.tensor_args())


@rule("aten::zeros", "aten::ones", "aten::full", "aten::empty", "aten::zeros_like",
      "aten::ones_like", "aten::full_like", "aten::empty_like", "aten::new_zeros",
      "aten::new_ones", "aten::new_full", "aten::new_empty", "aten::scalar_tensor",
      "aten::fill", "aten::fill_")
def constant(ctx):
    # the same value everywhere: invariant under any permutation, so its axes are free
    return ctx.engine.fresh(ctx.out_shape())


@rule("aten::arange", "aten::rand", "aten::randn", "aten::randint", "aten::rand_like",
      "aten::randn_like", "aten::tensor", "aten::eye", "aten::linspace")
def pinned(ctx):
    # position-dependent values: their axes are never permuted
    return ctx.engine.fresh(ctx.out_shape(), fixed=True)


@rule("aten::tril", "aten::triu", "aten::tril_", "aten::triu_")
def triangle(ctx):
    # keeps entries by position in the last two axes: those are pinned, the rest pass
    layout = ctx.layout(ctx.arg(0))
    ctx.engine.fix_layout(layout[-2:])
    return layout


@rule("aten::_assert_tensor_metadata", "aten::sym_size", "aten::sym_numel", "aten::dim",
      "aten::_assert_async", "aten::_assert_scalar", "aten::size", "aten::sym_stride")
def metadata(ctx):
    return None
