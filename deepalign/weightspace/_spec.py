"""``PermutationSpec``: which permutation acts on which axis of which parameter or buffer."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from deepalign.weightspace._structure import (BlockGroup, GroupedAxis, axis_perms,
                                              block_structure, item_to_json, normalise_item,
                                              random_block_perm)


class PermutationSpec:
    r"""The permutation symmetry of a network's weight space, in git-re-basin's form.

    A network whose hidden neurons can be reordered without changing its function has one
    permutation per group of tied hidden axes. ``axes_to_perm`` names, for each tensor of the
    ``state_dict`` and each of its axes, the permutation acting there (``None``: the axis is
    never permuted). ``perm_to_axes`` is the inverse map. Applying a hard permutation ``p`` to
    an axis gathers ``new.index_select(axis, p)``; see ``deepalign.permute``.

    Block axes. An axis whose size is ``k * n`` for a permutation of size ``n`` (a ``Linear``
    fed by ``Flatten`` of an ``(n, H, W)`` feature map, ``k = H * W``) is permuted in blocks:
    channel ``c`` owns the ``k`` consecutive entries ``c * k ... c * k + k - 1``. Block axes
    need the permutation sizes to be declared (``sizes=``), which ``from_module`` does; without
    them every axis of a permutation must have exactly the same size.

    Parameters
    ----------
    axes_to_perm : mapping of str to sequence of (str or None)
        One entry per tensor (parameter or buffer, including ones with no permuted axis such
        as ``num_batches_tracked`` with ``()``), one item per axis. Insertion order should be
        execution order; ``deepalign`` layouts follow it.
    sizes : mapping of str to int, optional
        Size of each permutation. Needed for block axes and structured specs.
    block_groups : sequence of BlockGroup, optional
        Perms sharing one permutation of blocks (attention heads, convolution groups).

    Structured specs (docs/CONTRACTS.md). An axis item may also be a tuple of perm names (a
    concatenated axis, one segment per perm, e.g. q, k, v packed in one projection) or a
    ``GroupedAxis(perm)`` (the input-channel axis of a grouped convolution); ``block_groups``
    restrict perms to block-structured ones. ``is_plain`` tells whether a spec uses none of
    this; algorithms that need plain specs say so with ``require_plain``.

    Examples
    --------
    A 2-hidden-layer MLP ``fc0 -> fc1 -> fc2``:

    >>> spec = PermutationSpec({"fc0.weight": ("P0", None), "fc0.bias": ("P0",),
    ...                         "fc1.weight": ("P1", "P0"), "fc1.bias": ("P1",),
    ...                         "fc2.weight": (None, "P1"), "fc2.bias": (None,)})
    >>> spec.perm_to_axes["P0"]
    [('fc0.weight', 0), ('fc0.bias', 0), ('fc1.weight', 1)]
    """

    def __init__(self, axes_to_perm: Mapping, sizes: Mapping | None = None,
                 block_groups=()):
        if not isinstance(axes_to_perm, Mapping):
            raise TypeError(f"axes_to_perm must be a mapping, got {type(axes_to_perm).__name__}")
        self.axes_to_perm: dict[str, tuple] = {}
        self.perm_to_axes: dict[str, list] = {}
        self.structured_axes: dict = {}  # (key, axis) -> concatenated or grouped item
        for key, axes in axes_to_perm.items():
            if isinstance(axes, str) or not isinstance(axes, (tuple, list)):
                raise TypeError(f"axes_to_perm[{key!r}] must be a tuple of perm names or None, "
                                f"got {axes!r}")
            items = tuple(normalise_item(item, f"axes_to_perm[{key!r}][{axis}]")
                          for axis, item in enumerate(axes))
            for axis, item in enumerate(items):
                if item is not None and not isinstance(item, str):
                    self.structured_axes[(key, axis)] = item
                for perm in dict.fromkeys(axis_perms(item)):
                    self.perm_to_axes.setdefault(perm, []).append((key, axis))
            self.axes_to_perm[key] = items
        self.sizes = None if sizes is None else {name: int(n) for name, n in sizes.items()}
        if self.sizes is not None and set(self.sizes) != set(self.perm_to_axes):
            raise ValueError(f"sizes must name exactly the perms {sorted(self.perm_to_axes)}, "
                             f"got {sorted(self.sizes)}")
        self.block_groups: tuple = tuple(
            g if isinstance(g, BlockGroup) else BlockGroup.from_dict(g) for g in block_groups)
        if (self.structured_axes or self.block_groups) and self.sizes is None:
            raise ValueError("a spec with concatenated or grouped axes or block groups needs "
                             "sizes= (the size of every perm)")
        self._check_block_groups()

    def _check_block_groups(self) -> None:
        owner = {}
        for group in self.block_groups:
            for perm in group.perms:
                if perm not in self.perm_to_axes:
                    raise ValueError(f"block group {group.name!r} names perm {perm!r}, which "
                                     "no axis uses")
                if perm in owner:
                    raise ValueError(f"perm {perm!r} is in two block groups, {owner[perm]!r} "
                                     f"and {group.name!r}")
                owner[perm] = group.name
                if self.sizes[perm] % group.blocks:
                    raise ValueError(f"block group {group.name!r}: perm {perm!r} of size "
                                     f"{self.sizes[perm]} does not split into {group.blocks} "
                                     "blocks")
        for (key, axis), item in self.structured_axes.items():
            if isinstance(item, GroupedAxis):
                group = self.block_group_of(item.perm)
                rows = self.axes_to_perm[key][0] if axis != 0 else None
                if group is None or not isinstance(rows, str) or rows not in group.perms:
                    raise ValueError(f"axes_to_perm[{key!r}][{axis}]: a grouped axis needs its "
                                     f"perm {item.perm!r} and the perm of axis 0 in one block "
                                     "group")

    def block_group_of(self, perm: str) -> BlockGroup | None:
        """The block group ``perm`` belongs to, or ``None``."""
        return next((g for g in self.block_groups if perm in g.perms), None)

    @property
    def is_plain(self) -> bool:
        """Whether every axis carries at most one whole perm and no perm is block-structured."""
        return not (self.structured_axes or self.block_groups)

    def require_plain(self, what: str) -> None:
        """Raise ``NotImplementedError`` naming ``what`` unless the spec is plain."""
        if not self.is_plain:
            parts = [f"{k}[{a}]" for k, a in self.structured_axes] + [
                f"block group {g.name!r} ({g.kind})" for g in self.block_groups]
            raise NotImplementedError(f"{what} supports plain permutation specs only; this one "
                                      f"has structured parts: {', '.join(parts[:4])}"
                                      + (" ..." if len(parts) > 4 else ""))

    # construction and export --------------------------------------------------------------
    @classmethod
    def from_perm_to_axes(cls, perm_to_axes: Mapping, shapes: Mapping,
                          sizes: Mapping | None = None) -> PermutationSpec:
        """Build a spec from the inverse form plus the rank of every tensor.

        Parameters
        ----------
        perm_to_axes : mapping of str to list of (str, int)
        shapes : mapping of str to tuple or Tensor
            Every tensor of the state_dict (the ones without permuted axes too), by shape or
            by the tensor itself.
        """
        ranks = {key: len(s.shape if isinstance(s, torch.Tensor) else s)
                 for key, s in shapes.items()}
        axes = {key: [None] * rank for key, rank in ranks.items()}
        for perm, entries in perm_to_axes.items():
            for key, axis in entries:
                if key not in axes:
                    raise KeyError(f"perm_to_axes[{perm!r}] names {key!r}, not in shapes")
                if not 0 <= axis < ranks[key]:
                    raise ValueError(f"perm_to_axes[{perm!r}]: axis {axis} out of range for "
                                     f"{key!r} of rank {ranks[key]}")
                axes[key][axis] = perm
        return cls({key: tuple(a) for key, a in axes.items()}, sizes)

    @classmethod
    def from_module(cls, model: torch.nn.Module, example_input) -> PermutationSpec:
        """Derive the spec of ``model`` from its ``torch.export`` graph.

        Every axis of every tensor in the graph is a variable; each op states which axes are
        equal (``deepalign.weightspace.tracing``) and the model's inputs and outputs are
        never permuted. Plain layers give plain perms named ``P_<module>``; attention gives
        q/k and v perms in a head block group, packed projections concatenated axes, grouped
        convolutions group block groups and grouped axes (docs/CONTRACTS.md).

        Parameters
        ----------
        model : nn.Module
        example_input : Tensor, tuple of Tensor or dict
            Positional (or keyword) arguments of ``model.forward``.

        Raises
        ------
        ValueError
            ``example_input`` does not run through ``model``.
        NotImplementedError
            An op touching permuted features has no rule (the message names the graph node,
            the op and the module path), or ``torch.export`` cannot trace the model.
        """
        from deepalign.weightspace.tracing import derive_symmetry

        axes_to_perm, sizes, block_groups = derive_symmetry(model, example_input)
        spec = cls(axes_to_perm, sizes, block_groups)
        spec.check(model)
        return spec

    def to_dict(self) -> dict:
        """JSON-ready git-re-basin-style dict: ``{"axes_to_perm": ..., "perm_to_axes": ...}``
        (plus ``sizes`` and ``block_groups`` when present)."""
        out = {"axes_to_perm": {k: [item_to_json(i) for i in v]
                                for k, v in self.axes_to_perm.items()},
               "perm_to_axes": {p: [list(e) for e in v] for p, v in self.perm_to_axes.items()}}
        if self.sizes is not None:
            out["sizes"] = dict(self.sizes)
        if self.block_groups:
            out["block_groups"] = [g.to_dict() for g in self.block_groups]
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> PermutationSpec:
        """Inverse of ``to_dict``; also accepts a plain ``axes_to_perm`` mapping."""
        if "axes_to_perm" not in data:
            return cls(data)
        spec = cls(data["axes_to_perm"], data.get("sizes"), data.get("block_groups", ()))
        given = data.get("perm_to_axes")
        if given is not None:
            normalised = {p: [(k, int(a)) for k, a in v] for p, v in given.items()}
            if normalised != spec.perm_to_axes:
                raise ValueError("perm_to_axes does not match the inverse of axes_to_perm")
        return spec

    # queries ------------------------------------------------------------------------------
    @property
    def perm_names(self) -> list:
        """Permutation names in order of first appearance (execution order)."""
        return list(self.perm_to_axes)

    def perm_sizes(self, state_dict: Mapping, batched: bool = False) -> dict:
        """Size of every permutation, checked against ``state_dict`` (see ``check``)."""
        return self.check(state_dict, batched=batched)

    def check(self, model_or_state_dict, batched: bool = False) -> dict:
        """Verify that this spec fits a model; return ``{perm name: size}``.

        Fails with a ``ValueError`` naming the tensor when a parameter or buffer is not
        covered, a covered name does not exist, a rank differs, or two axes tied to one
        permutation disagree in size.

        Parameters
        ----------
        model_or_state_dict : nn.Module or mapping of str to Tensor
        batched : bool
            Whether every tensor carries an extra leading batch dimension.
        """
        sd = (model_or_state_dict.state_dict()
              if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict)
        lead = 1 if batched else 0
        missing = [k for k in sd if k not in self.axes_to_perm]
        if missing:
            raise ValueError(f"the spec does not cover {missing} (every parameter and buffer "
                             "needs an axes_to_perm entry, () or (None, ...) if never permuted)")
        extra = [k for k in self.axes_to_perm if k not in sd]
        if extra:
            raise ValueError(f"the spec names {extra}, which the model does not have")
        for key, axes in self.axes_to_perm.items():
            if sd[key].dim() != len(axes) + lead:
                raise ValueError(f"{key!r} has shape {tuple(sd[key].shape)} but the spec gives "
                                 f"{len(axes)} axes {axes}" + (" plus a batch dim" * batched))
        for (key, axis), item in self.structured_axes.items():
            m = sd[key].shape[axis + lead]
            if isinstance(item, GroupedAxis):
                n, blocks = self.sizes[item.perm], self.block_group_of(item.perm).blocks
                if m * blocks != n:
                    raise ValueError(f"{key!r}: grouped axis {axis} has size {m}, expected "
                                     f"{n} // {blocks} groups of perm {item.perm!r}")
            elif m != sum(self.sizes[p] for p in item):
                raise ValueError(f"{key!r}: concatenated axis {axis} has size {m}, but its "
                                 f"segments {item} have sizes "
                                 f"{[self.sizes[p] for p in item]}")
        sizes = {}
        for perm, entries in self.perm_to_axes.items():
            lengths = {(k, a): sd[k].shape[a + lead] for k, a in entries
                       if (k, a) not in self.structured_axes}
            if not lengths:
                sizes[perm] = self.sizes[perm]
                continue
            n = self.sizes[perm] if self.sizes is not None else min(lengths.values())
            for (key, axis), m in lengths.items():
                ok = m == n or (self.sizes is not None and n > 0 and m % n == 0)
                if not ok:
                    first = next(iter(lengths))
                    raise ValueError(
                        f"perm {perm!r}: axis {axis} of {key!r} has size {m}, but axis "
                        f"{first[1]} of {first[0]!r} has size {lengths[first]}"
                        + (f" (declared size {n})" if self.sizes is not None else ""))
            sizes[perm] = n
        return sizes

    def random_perms(self, generator: torch.Generator | None = None,
                     batch_size: int | None = None, sizes: Mapping | None = None) -> dict:
        """A uniformly random element of the whole symmetry group, in the format ``permute``
        takes: int64 ``(n,)`` per perm (``(B, n)`` with ``batch_size``).

        Block groups draw one block permutation and independent permutations inside every
        block of every member. ``sizes`` is needed only when the spec declares none
        (``spec.check(state_dict)`` returns them).
        """
        sizes = dict(sizes if sizes is not None else self.sizes or {})
        if set(sizes) != set(self.perm_to_axes):
            raise ValueError(f"random_perms needs the size of every perm "
                             f"{sorted(self.perm_to_axes)}; pass sizes=spec.check(state_dict)")
        shape = () if batch_size is None else (batch_size,)
        out = {}
        for group in self.block_groups:
            blocks = torch.rand(*shape, group.blocks, generator=generator).argsort(dim=-1)
            for perm in group.perms:
                out[perm] = random_block_perm(blocks, sizes[perm] // group.blocks, generator)
        return {name: out[name] if name in out else
                torch.rand(*shape, sizes[name], generator=generator).argsort(dim=-1)
                for name in self.perm_names}

    def check_structure(self, perms: Mapping) -> None:
        """Raise ``ValueError`` unless the hard perms of every block group are block-structured
        and share one block permutation (soft perms are not checked)."""
        for group in self.block_groups:
            shared = None
            for perm in group.perms:
                p = perms[perm]
                if p.is_floating_point():
                    continue
                parts = block_structure(p, group.blocks)
                if parts is None:
                    raise ValueError(f"perms[{perm!r}] is not a permutation of {group.blocks} "
                                     f"whole blocks ({group.kind} of block group "
                                     f"{group.name!r}) composed with permutations inside them")
                if shared is not None and not torch.equal(*torch.broadcast_tensors(
                        shared, parts[0])):
                    raise ValueError(f"the perms of block group {group.name!r} ({group.kind}) "
                                     f"move the blocks differently: {group.perms}")
                shared = parts[0]

    def __eq__(self, other) -> bool:
        return (isinstance(other, PermutationSpec) and self.axes_to_perm == other.axes_to_perm
                and self.sizes == other.sizes and self.block_groups == other.block_groups)

    def __repr__(self) -> str:
        lines = [f"  {k}: {v}" for k, v in self.axes_to_perm.items()]
        lines += [f"  {g}" for g in self.block_groups]
        return f"PermutationSpec({len(self.perm_to_axes)} perms,\n" + "\n".join(lines) + ")"
