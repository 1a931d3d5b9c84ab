"""From solved axis variables to the spec's parts: axis items, perm sizes, block groups.

Every class of variables that is not pinned becomes one perm. A split class is a
concatenation (pinned outer: its parts' perms side by side), a block axis (pinned parts:
its outer perm moves blocks, e.g. after ``Flatten``) or a block-group member (both free: heads
or convolution groups). Whatever the spec format cannot say is pinned, which keeps the spec
exact (a subgroup of the true symmetry) and is repeated until nothing changes.
"""
from __future__ import annotations

from deepalign.weightspace._structure import BlockGroup, GroupedAxis
from deepalign.weightspace.tracing._engine import AxisEngine


class _Unexpressible(Exception):
    def __init__(self, var: int):
        super().__init__(var)
        self.var = var


def propagate(engine: AxisEngine) -> None:
    """Spread pins through splits until stable (all-or-nothing where the format needs it)."""
    while True:
        changed = True
        while changed:
            changed = False
            for r, (outer, parts) in list(engine.split.items()):
                fixed_parts = [engine.is_fixed(p) for p in parts]
                outer_fixed = engine.is_fixed(outer)
                kind = engine.kind.get(engine.find(outer), ("heads", ""))[0]
                if engine.is_fixed(r):
                    for v in [outer, *parts]:
                        changed |= engine.fix(v)
                elif all(fixed_parts):
                    if outer_fixed:
                        changed |= engine.fix(r)
                elif any(fixed_parts) or (outer_fixed and kind == "groups"):
                    changed |= engine.fix(r)
        # only once the pins are settled: a block-group member needs distinct, unsplit
        # inner perms (blocks sharing one inner perm are a Kronecker product, not a group)
        for r, (outer, parts) in list(engine.split.items()):
            if engine.is_fixed(r) or engine.is_fixed(outer):
                continue
            roots = {engine.find(p) for p in parts}
            if len(roots) < len(parts) or any(p in engine.split and not engine.is_fixed(p)
                                              for p in roots):
                changed |= engine.fix(r)
        if not changed:
            return



def _block_perms(engine: AxisEngine) -> set:
    """Classes that are the block permutation of a block group (a head axis, say)."""
    return {engine.find(outer) for r, (outer, parts) in engine.split.items()
            if not engine.is_fixed(r) and not engine.is_fixed(outer)
            and not all(engine.is_fixed(p) for p in parts)}


def _classify(engine: AxisEngine, v: int):
    """``None``, ``("perm", root)``, ``("block", root)`` or ``("concat", [roots])``."""
    r = engine.find(v)
    if engine.is_fixed(r):
        return None
    if r in engine.block_perms:
        # a tensor indexed by heads (a per-head bias) would need the group's block
        # permutation itself, which the spec format does not name: pin the blocks
        raise _Unexpressible(r)
    if r not in engine.split:
        return ("perm", r)
    outer, parts = engine.split[r]
    if all(engine.is_fixed(p) for p in parts):
        inner = _classify(engine, outer)
        if inner is None or inner[0] != "perm":
            raise _Unexpressible(r)
        return ("block", inner[1])
    if engine.is_fixed(outer):
        flat = []
        for p in parts:
            c = _classify(engine, p)
            if c is None or c[0] == "block":
                raise _Unexpressible(r)
            flat.extend([c[1]] if c[0] == "perm" else c[1])
        return ("concat", flat)
    return ("perm", r)


def _items(engine: AxisEngine, tensors: dict, grouped: dict) -> dict:
    out = {}
    for key, layout in tensors.items():
        items = []
        for axis in layout:
            (_, v), = axis
            if engine.find(v) in grouped:
                c = _classify(engine, grouped[engine.find(v)])
                if c is not None:
                    if c[0] != "perm" or engine.find(c[1]) not in engine.split:
                        raise _Unexpressible(grouped[engine.find(v)])  # pin the channels
                    c = ("grouped", c[1])
                items.append(c)
            else:
                items.append(_classify(engine, v))
        out[key] = items
    return out


def _unique(base: str, taken: set) -> str:
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def emit(engine: AxisEngine, tensors: dict, grouped: dict) -> tuple:
    """``(axes_to_perm, sizes, block_groups)`` for the spec.

    Parameters
    ----------
    tensors : dict of str to layout
        The layout of every state-dict tensor, in execution order.
    grouped : dict of int to int
        Grouped-convolution weight input-axis variables and the channel variable they read.

    Perms are named ``P_<hint or module path>`` after the first tensor (in execution order)
    that carries them; block groups ``H_<module>`` (heads) or ``G_<module>`` (groups).
    """
    grouped = {engine.find(w): v for w, v in grouped.items()}
    while True:
        propagate(engine)
        engine.block_perms = _block_perms(engine)
        try:
            raw = _items(engine, tensors, grouped)
            break
        except _Unexpressible as exc:
            if not engine.fix(exc.var):  # pinning must make progress, or this never ends
                raise RuntimeError(f"internal error: axis variable {exc.var} is pinned but "
                                   "still not expressible") from None
    names, sizes, taken = engine.perm_names, {}, set()

    def name_of(root, key):
        if root not in names:
            names[root] = _unique("P_" + (engine.hint[root] or key.rpartition(".")[0] or key),
                                  taken)
            sizes[names[root]] = engine.size[root]
        return names[root]

    axes_to_perm = {}
    for key, items in raw.items():
        row = []
        for c in items:
            if c is None:
                row.append(None)
            elif c[0] == "concat":
                row.append(tuple(name_of(r, key) for r in c[1]))
            elif c[0] == "grouped":
                row.append(GroupedAxis(name_of(c[1], key)))
            else:
                row.append(name_of(c[1], key))
        axes_to_perm[key] = tuple(row)
    members: dict = {}
    for root, name in names.items():
        split = engine.split.get(root)
        if split is not None and not engine.is_fixed(split[0]):
            members.setdefault(engine.find(split[0]), []).append(name)
    block_groups, used = [], set()
    for outer, perms in members.items():
        kind, module = engine.kind.get(outer, ("heads", ""))
        name = _unique(("H_" if kind == "heads" else "G_") + (module or perms[0][2:]), used)
        block_groups.append(BlockGroup(name, kind, engine.size[outer], tuple(perms)))
    return axes_to_perm, sizes, block_groups


def live_roots(engine: AxisEngine, perm_roots) -> set:
    """Every variable class a perm acts through: the perms, their head axes and head dims."""
    live = set()
    for root in perm_roots:
        live.add(engine.find(root))
        split = engine.split.get(engine.find(root))
        if split is not None:
            live.update(engine.find(v) for v in [split[0], *split[1]])
    return live
