"""Shape ops: views and reshapes, axis moves, concatenation and splitting, indexing.

Reshapes regroup the factors of the axes (``_engine.AxisEngine.reshape``): splitting an axis
of ``H * d`` features into ``(H, d)`` splits its variable into an outer part (which head) and
inner parts (which feature inside a head), merging them back restores it. Concatenating along
an axis makes a variable cut into consecutive parts in a fixed order; ``split``/``chunk`` cut
the same way, so ``c_attn``'s q, k, v segments are parts of one output axis. Indexing by
position (``select``, ``slice``, ``index``) pins the indexed axis.
"""
from __future__ import annotations

from deepalign.weightspace.tracing._engine import AxisConflict
from deepalign.weightspace.tracing._registry import rule


def _val_shapes(ctx) -> list:
    val = ctx.node.meta["val"]
    return [tuple(t.shape) for t in val] if isinstance(val, (list, tuple)) else [tuple(val.shape)]


@rule("aten::view", "aten::reshape", "aten::_unsafe_view", "aten::flatten", "aten::unflatten",
      "aten::view_as", "aten::reshape_as", "aten::squeeze", "aten::unsqueeze", "aten::squeeze_",
      "aten::unsqueeze_")
def reshape(ctx):
    return ctx.engine.reshape(ctx.layout(ctx.arg(0)), ctx.out_shape())


@rule("aten::permute")
def permute(ctx):
    x = ctx.layout(ctx.arg(0))
    return tuple(x[d % len(x)] for d in ctx.arg(1))


@rule("aten::transpose", "aten::swapaxes", "aten::swapdims")
def transpose(ctx):
    x = list(ctx.layout(ctx.arg(0)))
    a, b = ctx.arg(1) % len(x), ctx.arg(2) % len(x)
    x[a], x[b] = x[b], x[a]
    return tuple(x)


@rule("aten::t", "aten::numpy_T")
def t(ctx):
    return tuple(reversed(ctx.layout(ctx.arg(0))))


@rule("aten::mT", "aten::mH", "aten::adjoint")
def matrix_transpose(ctx):
    x = ctx.layout(ctx.arg(0))
    if len(x) < 2:
        ctx.fail("a matrix transpose of fewer than 2 dimensions")
    return x[:-2] + (x[-1], x[-2])


@rule("aten::movedim")
def movedim(ctx):
    x = list(ctx.layout(ctx.arg(0)))
    src, dst = ctx.arg(1), ctx.arg(2)
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [s % len(x) for s in src], [d % len(x) for d in dst]
    rest = [a for i, a in enumerate(x) if i not in src]
    out = [None] * len(x)
    for s, d in zip(src, dst):
        out[d] = x[s]
    it = iter(rest)
    return tuple(a if a is not None else next(it) for a in out)


@rule("aten::expand", "aten::expand_as", "aten::broadcast_to")
def expand(ctx):
    # a broadcast copy is the same along the new extent: any permutation of it is harmless
    x, out_shape = ctx.layout(ctx.arg(0)), ctx.out_shape()
    lead = len(out_shape) - len(x)
    out = list(ctx.engine.fresh(out_shape[:lead]))
    for axis, n in zip(x, out_shape[lead:]):
        out.append(axis if ctx.engine.axis_size(axis) == n else (("a", ctx.engine.var(n)),))
    return tuple(out)


@rule("aten::repeat")
def repeat(ctx):
    x, repeats = ctx.layout(ctx.arg(0)), list(ctx.arg(1))
    lead = len(repeats) - len(x)
    out = list(ctx.engine.fresh(repeats[:lead], fixed=True))
    for axis, r in zip(x, repeats[lead:]):  # tiles: (copy index, original index)
        out.append(axis if r == 1 else (("a", ctx.engine.var(r, fixed=True)),) + axis)
    return tuple(out)


def _pin(ctx, axis) -> None:
    """Pin an axis addressed by position, and resolve inner parts whose outer it is."""
    ctx.engine.fix_layout((axis,))


@rule("aten::select")
def select(ctx):
    x = ctx.layout(ctx.arg(0))
    dim = ctx.arg(1) % len(x)
    return _select(ctx, x, dim, ctx.arg(2) % ctx.engine.axis_size(x[dim]))


def _select(ctx, x, dim: int, index: int) -> tuple:
    """Layout of ``x`` indexed at ``index`` along ``dim`` (which is pinned)."""
    engine = ctx.engine
    chosen = {engine.find(v) for tag, v in x[dim] if tag == "a"}
    out = []
    for i, axis in enumerate(x):
        if i == dim:
            continue
        new = []
        for tag, v in axis:
            split = engine.split.get(engine.find(v)) if tag != "a" else None
            if split is None or len(x[dim]) != 1 or engine.find(split[0]) not in chosen:
                new.append((tag, v))
                continue
            part = split[1][index]  # the slot picks one part: q, k or v
            if tag == "i":
                new.append(("a", part))
            elif tag == "o":  # that part's heads, and the dims inside them
                new.append(("a", engine.split[engine.find(part)][0]))
            else:
                new.append(("i", part))
        out.append(tuple(new))
    _pin(ctx, x[dim])
    return tuple(out)


def _cut_axis(ctx, axis, sizes) -> list:
    """Parts of an axis cut into consecutive ``sizes`` (a plain axis is split in place)."""
    engine = ctx.engine
    if len(sizes) == 1:
        return [axis]
    if len(axis) != 1 or axis[0][0] != "a":
        whole = engine.var(engine.axis_size(axis))
        engine.tie(((("a", whole),)), axis)
        axis = (("a", whole),)
    return [(("a", p),) for p in engine.segment(axis[0][1], list(sizes))]


@rule("aten::slice", "aten::narrow")
def slice_(ctx):
    x = ctx.layout(ctx.arg(0))
    dim = ctx.arg(1, "dim", 0) % len(x)
    n = ctx.engine.axis_size(x[dim])
    length = ctx.out_shape()[dim]
    if ctx.node.target._schema.name == "aten::narrow":
        start, step = ctx.arg(2) % max(n, 1), 1
    else:
        start, step = ctx.arg(2, "start") or 0, ctx.arg(4, "step", 1)
        start = min(max(start + n if start < 0 else start, 0), n)
    if length == n:
        return x
    out = list(x)
    try:
        if step != 1:
            raise AxisConflict("strided slice")
        sizes = [s for s in (start, length, n - start - length) if s]
        parts = _cut_axis(ctx, x[dim], sizes)
        out[dim] = parts[0 if start == 0 else 1]
    except AxisConflict:
        _pin(ctx, x[dim])
        out[dim] = ctx.engine.fresh((length,), fixed=True)[0]
    return tuple(out)


def _tie_others(ctx, layouts, dim) -> tuple:
    first = layouts[0]
    for lay in layouts[1:]:
        for i, (a, b) in enumerate(zip(first, lay)):
            if i != dim and ctx.engine.axis_size(a) == ctx.engine.axis_size(b) != 1:
                ctx.engine.tie(a, b)
    return first


@rule("aten::cat", "aten::concat", "aten::concatenate")
def cat(ctx):
    pieces = [p for p in ctx.arg(0) if ctx.shape(p) is not None and ctx.shape(p) != (0,)]
    layouts = [ctx.layout(p) for p in pieces]
    dim = ctx.arg(1, "dim", 0) % len(layouts[0])
    first = _tie_others(ctx, layouts, dim)
    sizes = [ctx.engine.axis_size(lay[dim]) for lay in layouts]
    whole = ctx.engine.var(sum(sizes))
    for part, lay in zip(ctx.engine.segment(whole, sizes) if len(sizes) > 1 else [whole],
                         layouts):
        ctx.engine.tie((("a", part),), lay[dim])
    return first[:dim] + ((("a", whole),),) + first[dim + 1:]


@rule("aten::stack")
def stack(ctx):
    layouts = [ctx.layout(p) for p in ctx.arg(0)]
    dim = ctx.arg(1, "dim", 0) % (len(layouts[0]) + 1)
    first = _tie_others(ctx, layouts, -1)
    return first[:dim] + ctx.engine.fresh((len(layouts),), fixed=True) + first[dim:]


@rule("aten::split", "aten::split_with_sizes", "aten::chunk", "aten::tensor_split",
      "aten::unbind", "aten::unsafe_split", "aten::unsafe_chunk")
def split(ctx):
    x = ctx.layout(ctx.arg(0))
    shapes = _val_shapes(ctx)
    name = ctx.node.target._schema.name
    dim = ctx.arg(1, "dim", 0) if name == "aten::unbind" else ctx.arg(2, "dim", 0)
    dim %= len(x)
    if name == "aten::unbind":  # each slice as ``select`` (unbinding packed q, k, v)
        return [_select(ctx, x, dim, i) for i in range(len(shapes))]
    parts = _cut_axis(ctx, x[dim], [s[dim] for s in shapes])
    return [x[:dim] + (p,) + x[dim + 1:] for p in parts]


@rule("getitem")
def getitem(ctx):
    value = ctx.layout(ctx.arg(0))
    if isinstance(value, list):
        return value[ctx.arg(1)]
    ctx.fail("indexing a value that is not a list of tensors")


@rule("aten::index")
def index(ctx):
    x, indices = ctx.layout(ctx.arg(0)), list(ctx.arg(1))
    engine = ctx.engine
    where = [i for i, idx in enumerate(indices) if idx is not None]
    for i in where:
        _pin(ctx, x[i])
    idx_layouts = [ctx.layout(indices[i]) for i in where]
    idx_shapes = [ctx.shape(indices[i]) for i in where]
    out_shape = ctx.out_shape()
    rest = [a for i, a in enumerate(x) if i not in where]
    k = len(out_shape) - len(rest)
    if len(set(idx_shapes)) == 1 and len(idx_shapes[0]) == k:
        dims = idx_layouts[0]
        for lay in idx_layouts[1:]:
            for a, b in zip(dims, lay):
                engine.tie(a, b)
    else:  # broadcasting index tensors: pin them, the result's index axes are positions
        for lay in idx_layouts:
            engine.fix_layout(lay)
        dims = engine.fresh(out_shape[:k] if where != list(range(where[0], where[-1] + 1))
                            else out_shape[where[0]:where[0] + k], fixed=True)
    if where == list(range(where[0], where[-1] + 1)):
        return tuple(x[:where[0]]) + tuple(dims) + tuple(x[where[-1] + 1:])
    return tuple(dims) + tuple(rest)
