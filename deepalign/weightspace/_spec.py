"""``PermutationSpec``: which permutation acts on which axis of which parameter or buffer."""
from __future__ import annotations

from collections.abc import Mapping

import torch


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
        Size of each permutation. Needed only for block axes.

    Examples
    --------
    A 2-hidden-layer MLP ``fc0 -> fc1 -> fc2``:

    >>> spec = PermutationSpec({"fc0.weight": ("P0", None), "fc0.bias": ("P0",),
    ...                         "fc1.weight": ("P1", "P0"), "fc1.bias": ("P1",),
    ...                         "fc2.weight": (None, "P1"), "fc2.bias": (None,)})
    >>> spec.perm_to_axes["P0"]
    [('fc0.weight', 0), ('fc0.bias', 0), ('fc1.weight', 1)]
    """

    def __init__(self, axes_to_perm: Mapping, sizes: Mapping | None = None):
        if not isinstance(axes_to_perm, Mapping):
            raise TypeError(f"axes_to_perm must be a mapping, got {type(axes_to_perm).__name__}")
        self.axes_to_perm: dict[str, tuple] = {}
        self.perm_to_axes: dict[str, list] = {}
        for key, axes in axes_to_perm.items():
            if isinstance(axes, str) or not isinstance(axes, (tuple, list)):
                raise TypeError(f"axes_to_perm[{key!r}] must be a tuple of perm names or None, "
                                f"got {axes!r}")
            for axis, perm in enumerate(axes):
                if perm is not None and not isinstance(perm, str):
                    raise TypeError(f"axes_to_perm[{key!r}][{axis}] must be a str or None, "
                                    f"got {perm!r}")
                if perm is not None:
                    self.perm_to_axes.setdefault(perm, []).append((key, axis))
            self.axes_to_perm[key] = tuple(axes)
        self.sizes = None if sizes is None else {name: int(n) for name, n in sizes.items()}
        if self.sizes is not None and set(self.sizes) != set(self.perm_to_axes):
            raise ValueError(f"sizes must name exactly the perms {sorted(self.perm_to_axes)}, "
                             f"got {sorted(self.sizes)}")

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
        """Derive the spec of ``model`` by tracing it with ``torch.fx``.

        See ``deepalign.weightspace.trace_permutations`` for the supported layers.
        """
        from deepalign.weightspace._fx_spec import trace_permutations

        return trace_permutations(model, example_input).spec

    def to_dict(self) -> dict:
        """JSON-ready git-re-basin-style dict: ``{"axes_to_perm": ..., "perm_to_axes": ...}``."""
        out = {"axes_to_perm": {k: list(v) for k, v in self.axes_to_perm.items()},
               "perm_to_axes": {p: [list(e) for e in v] for p, v in self.perm_to_axes.items()}}
        if self.sizes is not None:
            out["sizes"] = dict(self.sizes)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> PermutationSpec:
        """Inverse of ``to_dict``; also accepts a plain ``axes_to_perm`` mapping."""
        if "axes_to_perm" not in data:
            return cls(data)
        spec = cls(data["axes_to_perm"], data.get("sizes"))
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
        sizes = {}
        for perm, entries in self.perm_to_axes.items():
            lengths = {(k, a): sd[k].shape[a + lead] for k, a in entries}
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

    def __eq__(self, other) -> bool:
        return (isinstance(other, PermutationSpec) and self.axes_to_perm == other.axes_to_perm
                and self.sizes == other.sizes)

    def __repr__(self) -> str:
        lines = [f"  {k}: {v}" for k, v in self.axes_to_perm.items()]
        return f"PermutationSpec({len(self.perm_to_axes)} perms,\n" + "\n".join(lines) + ")"
