"""Matrix products: the contracted axes of both operands carry one permutation.

``sum_j x[..., j] W[o, j]`` is unchanged when ``x``'s last axis and ``W``'s input axis are
permuted alike; the output's last axis is ``W``'s output axis. This covers ``nn.Linear``
(``linear``, weight ``(out, in)``), Hugging Face ``Conv1D`` (``addmm``, weight ``(in, out)``),
products of two activations (``q @ k.T`` in hand-written attention) and ``einsum``, where
every letter is one axis variable across the operands and the output.
"""
from __future__ import annotations

from deepalign.weightspace.tracing._registry import rule


def _tie_batch(ctx, a, b, out_batch) -> tuple:
    """Tie right-aligned batch axes of two layouts (size 1 broadcasts); the output's."""
    engine, out = ctx.engine, []
    for i, n in enumerate(out_batch):
        back = len(out_batch) - i
        present = [lay[len(lay) - back] for lay in (a, b)
                   if len(lay) >= back and engine.axis_size(lay[len(lay) - back]) == n]
        if n == 1 or not present:
            out.append((("a", engine.var(n)),))
            continue
        if len(present) == 2:
            engine.tie(present[0], present[1])
        out.append(present[0])
    return tuple(out)


def matmul_layout(ctx, a, b) -> tuple:
    """Layout of ``a @ b`` (torch.matmul semantics, 1-D operands included)."""
    engine = ctx.engine
    if len(a) == 1 and len(b) == 1:
        engine.tie(a[0], b[0])
        return ()
    if len(b) == 1:
        engine.tie(a[-1], b[0])
        return a[:-1]
    if len(a) == 1:
        engine.tie(a[0], b[-2])
        return b[:-2] + b[-1:]
    engine.tie(a[-1], b[-2])
    out_shape = ctx.out_shape()
    batch = _tie_batch(ctx, a[:-2], b[:-2], out_shape[:-2])
    return batch + (a[-2], b[-1])


@rule("aten::matmul", "aten::mm", "aten::bmm")
def matmul(ctx):
    a, b = ctx.layout(ctx.arg(0)), ctx.layout(ctx.arg(1))
    _name_heads(ctx, a, b)
    return matmul_layout(ctx, a, b)


def _name_heads(ctx, a, b) -> None:
    # attention by hand: scores contract the head dims of q and k, the output carries v's
    if len(a) > 1 and len(b) > 1 and not ctx.name_heads(a[-1], "qk"):
        ctx.name_heads(b[-1], "v")


@rule("aten::linear")
def linear(ctx):
    x, weight = ctx.layout(ctx.arg(0)), ctx.layout(ctx.arg(1))
    if len(weight) == 1:
        ctx.fail("a 1-D linear weight")
    ctx.engine.tie(x[-1], weight[1])
    out = x[:-1] + (weight[0],)
    bias = ctx.arg(2, "bias")
    if ctx.layout(bias) is not None:
        ctx.engine.tie(ctx.layout(bias)[-1], weight[0])
    return out


@rule("aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::addmv")
def addmm(ctx):
    a, b = ctx.layout(ctx.arg(1)), ctx.layout(ctx.arg(2))
    _name_heads(ctx, a, b)
    product = matmul_layout(ctx, a, b)
    bias, shape = ctx.layout(ctx.arg(0)), ctx.shape(ctx.arg(0))
    out_shape = ctx.out_shape()
    for i in range(1, min(len(shape), len(out_shape)) + 1):
        if shape[-i] == out_shape[-i] and shape[-i] != 1:
            ctx.engine.tie(bias[-i], product[-i])
    return product


def _einsum_letters(equation: str, ranks: list) -> tuple:
    """Per operand and for the output, one label per axis; ``...`` becomes right-aligned
    labels shared by all operands (numpy broadcasting)."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"einsum equation {equation!r} names {len(terms)} operands, "
                         f"got {len(ranks)}")
    ellipsis = max((rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks)
                    if "..." in t), default=0)
    dots = [f"...{i}" for i in range(ellipsis)]

    def labels(term, rank=None):
        head, found, tail = term.partition("...")
        if not found:
            return list(head)
        width = len(dots) if rank is None else rank - len(head) - len(tail)
        return list(head) + dots[len(dots) - width:] + list(tail)

    operands = [labels(t, r) for t, r in zip(terms, ranks)]
    if not arrow:  # implicit output: the broadcast axes, then the letters used once, sorted
        once = sorted(c for c in set(inputs) if c.isalpha() and inputs.count(c) == 1)
        output = "..." * bool(dots) + "".join(once)
    return operands, labels(output)


@rule("aten::einsum")
def einsum(ctx):
    engine = ctx.engine
    operands = list(ctx.arg(1))
    layouts, shapes = [ctx.layout(a) for a in operands], [ctx.shape(a) for a in operands]
    if any(lay is None for lay in layouts):
        ctx.fail("an einsum operand that is not a tensor")
    try:
        inputs, output = _einsum_letters(ctx.arg(0), [len(s) for s in shapes])
    except ValueError as exc:
        ctx.fail(str(exc))
    axes = {}  # label -> the first non-broadcast axis carrying it
    for lay, shape, labels in zip(layouts, shapes, inputs):
        for axis, n, label in zip(lay, shape, labels):
            if n == 1:
                continue
            if label in axes:
                engine.tie(axes[label], axis)
            else:
                axes[label] = axis
    if len(layouts) == 2:  # attention by einsum: name the head dims as ``@`` does
        contracted = [a for label, a in zip(inputs[0], layouts[0])
                      if label not in output and label in inputs[1]]
        if not any(ctx.name_heads(a, "qk") for a in contracted):
            for label, a in zip(inputs[1], layouts[1]):
                if label in output:
                    ctx.name_heads(a, "v")
    out_shape = ctx.out_shape()
    return tuple(axes[label] if label in axes else (("a", engine.var(n)),)
                 for label, n in zip(output, out_shape))
