"""Axis unification: every axis of every tensor is a variable; equal variables share a perm.

A tensor's layout is a tuple of axes; an axis is a tuple of *factors* in row-major order (a
plain axis has one factor, a flattened ``(C, H, W) -> C*H*W`` axis has three). A factor is

- ``("a", v)``: the axis (or this part of it) is permuted by variable ``v``;
- ``("i", v)``: the *inner* part of a split variable ``v`` (below), whose outer part is
  another factor of the same tensor (the head axis next to the head-dim axis);
- ``("o", v)`` and ``("ii", v)``: for a split ``v`` whose parts are split alike, the outer
  and the inner part of those parts, indexed by ``v``'s outer elsewhere in the tensor: timm's
  ``reshape(B, N, 3, H, d)`` of a packed projection has the segment axis ``("a", outer)``,
  the head axis ``("o", v)`` (segment ``k``'s head perm) and the head-dim axis ``("ii", v)``.
  Selecting a segment turns them into ``("a", head perm of k)`` and ``("i", part k)``; they
  support little else (a rule that meets them elsewhere gives up, which stays exact).

Variables live in a union-find. A variable may be **split** into ``k`` consecutive parts:
``split[v] = (outer, parts)``. Its perm is then ``p[b*m + j] = s[b]*m + t_b[j]`` with ``s``
acting on ``outer`` (size ``k``) and ``t_b`` on ``parts[b]``: exactly the block structure of
attention heads and convolution groups. A split whose outer is FIXED is a concatenation
(q, k and v packed in one projection): the parts are independent perms side by side. A split
whose parts are all FIXED and outer free is a block axis (a ``Linear`` after ``Flatten``).

Rules only ever state equalities (``union``) and pins (``fix``); both only shrink the group
they describe, so any conservative choice stays exact.
"""
from __future__ import annotations

import math


class AxisConflict(Exception):
    """Two axes a rule wants equal cannot be (sizes or split structures differ)."""


class AxisEngine:
    """Union-find over axis variables, with splits, pins and block-kind marks."""

    def __init__(self):
        self.parent: list = []
        self.size: list = []
        self.fixed: list = []
        self.hint: list = []
        self.split: dict = {}  # root -> (outer var, [part vars])
        self.kind: dict = {}  # outer root -> (kind, module path): who made the blocks
        self.perm_names: dict = {}  # root -> perm name, filled when the spec is emitted
        self.block_perms: set = set()  # classes moving the blocks of a block group

    # variables ----------------------------------------------------------------------------
    def var(self, size: int, fixed: bool = False, hint: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(fixed or size == 1)
        self.hint.append(hint)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def is_fixed(self, v: int) -> bool:
        return self.fixed[self.find(v)]

    def fix(self, v: int) -> bool:
        """Pin ``v`` to the identity; return whether that changed anything."""
        r = self.find(v)
        changed = not self.fixed[r]
        self.fixed[r] = True
        return changed

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise AxisConflict(f"axes of sizes {self.size[ra]} and {self.size[rb]} must be equal")
        keep, drop = min(ra, rb), max(ra, rb)  # the earlier variable names the class
        self.parent[drop] = keep
        self.fixed[keep] = self.fixed[keep] or self.fixed[drop]
        self.hint[keep] = self.hint[keep] or self.hint[drop]
        sa, sb = self.split.pop(keep, None), self.split.pop(drop, None)
        if sa is not None and sb is not None:
            if [self.size[p] for p in sa[1]] != [self.size[p] for p in sb[1]]:
                raise AxisConflict(f"one axis is split two ways: parts "
                                   f"{[self.size[p] for p in sa[1]]} and "
                                   f"{[self.size[p] for p in sb[1]]}")
            self.split[keep] = sa
            self.union(sa[0], sb[0])
            for pa, pb in zip(sa[1], sb[1]):
                self.union(pa, pb)
        elif sa is not None or sb is not None:
            self.split[keep] = sa if sa is not None else sb
        ka, kb = self.kind.pop(keep, None), self.kind.pop(drop, None)
        if ka or kb:
            self.kind[keep] = ka or kb

    def split_equal(self, v: int, k: int) -> tuple:
        """Split ``v`` into ``k`` equal parts (reusing an existing split): ``(outer, parts)``."""
        r = self.find(v)
        if r in self.split:
            outer, parts = self.split[r]
            if len(parts) != k:
                raise AxisConflict(f"an axis of size {self.size[r]} already split into "
                                   f"{len(parts)} parts is split into {k}")
            return outer, parts
        if self.size[r] % k:
            raise AxisConflict(f"an axis of size {self.size[r]} does not split into {k} parts")
        m = self.size[r] // k
        self.split[r] = (self.var(k, fixed=self.fixed[r]), [self.var(m) for _ in range(k)])
        return self.split[r]

    def segment(self, v: int, sizes: list) -> list:
        """Cut ``v`` into consecutive parts of ``sizes`` in a fixed order (cat, split, slice)."""
        r = self.find(v)
        if r in self.split:
            outer, parts = self.split[r]
            if [self.size[p] for p in parts] != list(sizes):
                raise AxisConflict(f"an axis split into {[self.size[p] for p in parts]} is cut "
                                   f"into {list(sizes)}")
            self.fix(outer)
            return parts
        self.split[r] = (self.var(len(sizes), fixed=True), [self.var(s) for s in sizes])
        return self.split[r][1]

    def mark(self, outer: int, kind: str, module: str) -> None:
        """Record that the blocks of ``outer`` are heads or conv groups of ``module``."""
        self.kind.setdefault(self.find(outer), (kind, module))

    # layouts ------------------------------------------------------------------------------
    def fsize(self, factor) -> int:
        tag, v = factor
        r = self.find(v)
        if tag == "a":
            return self.size[r]
        part = self.size[r] // len(self.split[r][1])
        if tag == "i":
            return part
        blocks = len(self.split[self.find(self.split[r][1][0])][1])
        return blocks if tag == "o" else part // blocks

    def fresh(self, shape, fixed: bool = False) -> tuple:
        """A layout of new variables (``fixed``: pinned, e.g. the model inputs)."""
        return tuple((("a", self.var(n, fixed)),) for n in shape)

    def axis_size(self, axis) -> int:
        return math.prod(self.fsize(f) for f in axis)

    def variables(self, layout) -> list:
        return [v for axis in layout for _, v in axis]

    def fix_layout(self, layout) -> None:
        for axis in layout:
            for tag, v in axis:
                self.fix(v)
                if tag == "i":
                    for p in self.split[self.find(v)][1]:
                        self.fix(p)

    def cut(self, factor, size: int) -> tuple:
        """Cut a factor into ``(head of size, rest)``: splits the variable (an inner factor:
        every part of it, alike, giving ``("o", v), ("ii", v)``)."""
        tag, v = factor
        if tag == "i":
            parts = self.split[self.find(v)][1]
            if len({self.size[self.find(p)] for p in parts}) != 1:
                raise AxisConflict("cannot cut the inner part of a split into unequal parts")
            for p in parts:
                self.split_equal(p, size)
            return ("o", v), ("ii", v)
        if tag != "a":
            raise AxisConflict("cannot cut an axis that is already split twice")
        outer, _ = self.split_equal(v, size)
        return ("a", outer), ("i", v)

    def tie(self, axis_a, axis_b) -> None:
        """Make two axes (factor tuples of equal total size) carry the same permutation."""
        fa = [f for f in axis_a if self.fsize(f) != 1]
        fb = [f for f in axis_b if self.fsize(f) != 1]
        while fa or fb:
            if not fa or not fb:
                raise AxisConflict("axes of different sizes")
            x, y = fa[0], fb[0]
            sx, sy = self.fsize(x), self.fsize(y)
            if sx == sy:
                self.tie_factors(x, y)
                fa.pop(0), fb.pop(0)
                continue
            if sx < sy:  # keep the bigger factor in x
                fa, fb, x, y, sx, sy = fb, fa, y, x, sy, sx
            if x[0] in ("o", "ii"):
                raise AxisConflict("cannot tie an axis indexed through another axis")
            if x[0] == "a":
                if sx % sy:
                    raise AxisConflict(f"an axis of size {sx} does not split at {sy}")
                head, rest = self.cut(x, sy)
                self.tie_factors(head, y)
                fa[0] = rest
                fb.pop(0)
                continue
            group, total = [], 1  # an inner part against several smaller factors
            while fb and total < sx:
                total *= self.fsize(fb[0])
                group.append(fb.pop(0))
            if total != sx:
                raise AxisConflict(f"axes of sizes {sx} and {total} do not line up")
            for part in self.split[self.find(x[1])][1]:
                self.tie((("a", part),), tuple(group))
            fa.pop(0)

    def tie_factors(self, x, y) -> None:
        if "o" in (x[0], y[0]) or "ii" in (x[0], y[0]):
            if x[0] == y[0] and self.find(x[1]) == self.find(y[1]):
                return
            raise AxisConflict("cannot tie an axis indexed through another axis")
        if x[0] == y[0]:
            self.union(x[1], y[1])  # two inner parts: their whole split variables are equal
            return
        atom, inner = (x, y) if x[0] == "a" else (y, x)
        for part in self.split[self.find(inner[1])][1]:  # every block's perm is that one
            self.union(atom[1], part)

    def reshape(self, layout, out_shape) -> tuple:
        """The layout of ``view``/``reshape`` of ``layout`` to ``out_shape``."""
        factors = [f for axis in layout for f in axis if self.fsize(f) != 1]
        out = []
        for n in out_shape:
            axis, need = [], n
            while need > 1:
                if not factors:
                    raise AxisConflict("reshape does not preserve the number of elements")
                f = factors[0]
                s = self.fsize(f)
                if need % s == 0:
                    axis.append(factors.pop(0))
                    need //= s
                elif s % need == 0:
                    head, factors[0] = self.cut(f, need)
                    axis.append(head)
                    need = 1
                else:
                    raise AxisConflict(f"reshape mixes an axis of size {s} into one of size {n}")
            out.append(tuple(axis) if axis else (("a", self.var(1)),))
        return self.fold(tuple(out))

    def fold(self, layout) -> tuple:
        """Merge ``(outer of v, inner of v)`` back into ``v`` wherever they sit side by side."""
        out = []
        for axis in layout:
            axis = list(axis)
            i = 0
            while i + 1 < len(axis):
                (t0, v0), (t1, v1) = axis[i], axis[i + 1]
                r1 = self.find(v1)
                if t0 == "a" and t1 == "i" and self.find(self.split[r1][0]) == self.find(v0):
                    axis[i:i + 2] = [("a", r1)]
                    i = max(i - 1, 0)
                elif t0 == "o" and t1 == "ii" and self.find(v0) == r1:  # whole parts again
                    axis[i:i + 2] = [("i", r1)]
                    i = max(i - 1, 0)
                else:
                    i += 1
            out.append(tuple(axis))
        return tuple(out)

    def orphans(self, layout) -> list:
        """Split variables whose inner part is in ``layout`` but whose outer is not (for
        ``("ii", v)``, also ``("o", v)``)."""
        present = {self.find(v) for axis in layout for t, v in axis if t == "a"}
        heads = {self.find(v) for axis in layout for t, v in axis if t == "o"}
        return [v for axis in layout for t, v in axis
                if t != "a" and (self.find(self.split[self.find(v)][0]) not in present
                                 or t == "ii" and self.find(v) not in heads)]
