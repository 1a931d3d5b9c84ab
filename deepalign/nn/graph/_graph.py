r"""``WeightGraph``: a network's weight space as a graph of units, read off its ``PermutationSpec``.

Nodes are *units*, grouped in sets:

* ``"perm"`` sets, one per permutation of the spec, one node per index: every tensor axis the
  perm acts on reads and writes the same nodes, so residual streams (one perm on many layers'
  axes) and BatchNorm parameters are tied without any special case;
* ``"fixed"`` sets, the unpermuted unit axes (a first layer's inputs, a head's outputs), one per
  ``(module, axis, size)``; the encoder gives each of their nodes a learned positional
  embedding, so that only the hidden units are exchangeable;
* ``"blocks"`` sets, one per block group (attention heads, convolution groups), one node per
  block, linked to every unit of its block in every member perm: a relabelling that mixes units
  across blocks, or moves blocks differently in two members, is then no graph automorphism.

Tensors become *pieces* (a concatenated axis, e.g. packed q/k/v, splits its tensor into one
piece per segment):

* a tensor of rank >= 2 whose axis 0 or 1 is permuted is an **edge piece**: one edge per pair
  (unit of axis 0 = ``dst``, unit of axis 1 = ``src``), the remaining axes (kernel taps) and the
  ``k`` entries a unit owns on a block axis (``Linear`` after ``Flatten``) flattened into the
  edge's feature vector. A grouped-convolution axis links row ``o`` of group ``g`` only to the
  input units of group ``g``;
* a tensor of rank 1, or one whose only perm sits beyond axis 1 (a position embedding
  ``(1, T, D)``), is a **node piece**: its entries on each unit are that unit's features
  (bias, norm weight and bias, BatchNorm running statistics);
* integer buffers (``num_batches_tracked``) carry no weights and are skipped.

Group action. For hard perms ``g`` (``new[i] = old[g[i]]``), node ``i`` of perm ``P`` in
``g # v`` carries exactly what node ``g_P[i]`` carries in ``v``, and edge ``(i, j)`` what edge
``(g[i], g[j])`` carries: relabelling nodes by ``g`` is an isomorphism of the two graphs. Any
encoder built from per-node / per-edge maps and sums over neighbours is therefore
equivariant; which *extra* relabellings it is equivariant to is decided by the node types and
positional embeddings above (see ``_encoder.py``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from deepalign.weightspace._structure import GroupedAxis


@dataclass(frozen=True)
class UnitSet:
    """A set of nodes: ``kind`` 'perm', 'fixed' or 'blocks'; nodes ``offset .. offset+size-1``."""
    name: str
    kind: str
    offset: int
    size: int


@dataclass(frozen=True)
class Piece:
    """One tensor, or one segment of a concatenated axis, and where its entries go.

    ``sets`` names the unit set of axis 0 (node pieces: the one set) and of axis 1 (edge
    pieces); ``start``/``length`` select the segment on ``axis`` (the whole tensor when
    ``axis`` is None); ``unit_axis`` is the axis a node piece's units lie on; ``features`` is
    the width of each node's / edge's raw feature vector.
    """
    name: str
    key: str
    kind: str  # "node" or "edge"
    sets: tuple
    features: int
    axis: int | None = None
    start: int = 0
    length: int = 0
    unit_axis: int = 0
    grouped: int = 0  # input units per group of a grouped-convolution piece, else 0


class WeightGraph:
    """The graph of a spec's weight space (module docstring): structure only, no values.

    Parameters
    ----------
    spec : PermutationSpec
    state_dict : mapping of str to Tensor
        One network (unbatched), for the shapes; integer tensors are skipped.

    Attributes
    ----------
    sets : dict of str to UnitSet
        Perm sets first (in ``spec.perm_names`` order), then fixed sets, then block sets.
    num_nodes : int
    node_pieces, edge_pieces : list of Piece
    src, dst : LongTensor, shape (E,)
        Edge ``k`` runs from unit ``src[k]`` (axis 1) to unit ``dst[k]`` (axis 0), edge pieces
        in order, then one edge per (block, member unit) from the block node to the unit.
    edge_counts : list of int
        Edges of each edge piece, then of each block group's member perms (``block_edges``).
    block_edges : list of (str, str)
        ``(block group name, member perm)`` of the trailing block edges.
    """

    def __init__(self, spec, state_dict: Mapping):
        self.spec = spec
        self.sizes = spec.check(state_dict)
        self.sets: dict = {}
        for perm in spec.perm_names:
            self._add_set(perm, "perm", self.sizes[perm])
        self.node_pieces, self.edge_pieces = [], []
        for key, value in state_dict.items():
            if value.is_floating_point():
                self._add_tensor(key, tuple(value.shape))
        self.block_edges = []
        for group in spec.block_groups:
            self._add_set(f"blocks:{group.name}", "blocks", group.blocks)
            self.block_edges += [(group.name, perm) for perm in group.perms]
        self.num_nodes = sum(s.size for s in self.sets.values())
        src, dst, self.edge_counts = self._edges()
        self.src, self.dst = src, dst

    # construction -------------------------------------------------------------------------
    def _add_set(self, name: str, kind: str, size: int) -> UnitSet:
        if name not in self.sets:
            offset = sum(s.size for s in self.sets.values())
            self.sets[name] = UnitSet(name, kind, offset, size)
        return self.sets[name]

    def _unit_set(self, key: str, axis: int, item, size: int) -> tuple:
        """(set name, units owned per unit k) of one unit axis of ``key``."""
        if item is None:
            module = key.rsplit(".", 1)[0] if "." in key else ""
            return self._add_set(f"fixed:{module}[{axis}]:{size}", "fixed", size).name, 1
        perm = item.perm if isinstance(item, GroupedAxis) else item
        n = self.sizes[perm]
        return perm, (1 if isinstance(item, GroupedAxis) else size // n)

    def _add_tensor(self, key: str, shape: tuple) -> None:
        items = self.spec.axes_to_perm[key]
        if len(shape) == 0:  # (spec.check has made sure it carries no perm)
            raise NotImplementedError(f"graph encoder: scalar parameter {key!r} has no unit to "
                                      "attach to")
        segmented = [a for a, item in enumerate(items) if isinstance(item, tuple)]
        if any(a > 1 for a in segmented) or len(segmented) > 1:
            raise NotImplementedError(
                f"graph encoder: {key!r} has concatenated axes {segmented}; only one, on axis "
                "0 or 1, is supported")
        if not segmented:
            self._add_piece(key, key, shape, items, None, 0)
            return
        axis = segmented[0]
        start = 0
        for i, perm in enumerate(items[axis]):
            length = self.sizes[perm]
            sub = shape[:axis] + (length,) + shape[axis + 1:]
            seg_items = items[:axis] + (perm,) + items[axis + 1:]
            self._add_piece(f"{key}@{i}", key, sub, seg_items, axis, start)
            start += length

    def _add_piece(self, name, key, shape, items, axis, start) -> None:
        common = dict(name=name, key=key, axis=axis, start=start,
                      length=shape[axis] if axis is not None else 0)
        rank = len(shape)
        perms_at = [a for a, item in enumerate(items) if item is not None]
        if rank == 1 or (perms_at and min(perms_at) >= 2):
            unit_axis = perms_at[0] if perms_at else 0
            if len(perms_at) > 1:
                raise NotImplementedError(f"graph encoder: {key!r} has perms {items} on several "
                                          "axes beyond axis 1")
            if isinstance(items[unit_axis], GroupedAxis):
                raise NotImplementedError(f"graph encoder: grouped axis of {key!r} is not axis 1")
            unit_set, _ = self._unit_set(key, unit_axis, items[unit_axis], shape[unit_axis])
            width = _numel(shape) // self.sets[unit_set].size
            self.node_pieces.append(Piece(kind="node", sets=(unit_set,), features=width,
                                          unit_axis=unit_axis, **common))
            return
        beyond = [a for a in perms_at if a >= 2]
        if beyond:
            raise NotImplementedError(f"graph encoder: {key!r} has perms {items}: a weight-like "
                                      f"tensor with a perm on axis {beyond[0]} beyond its "
                                      "(out, in) axes")
        if isinstance(items[0], GroupedAxis):
            raise NotImplementedError(f"graph encoder: {key!r} has a grouped axis 0")
        dst_set, k0 = self._unit_set(key, 0, items[0], shape[0])
        src_set, k1 = self._unit_set(key, 1, items[1], shape[1])
        grouped = shape[1] if isinstance(items[1], GroupedAxis) else 0
        if grouped and k0 != 1:
            raise NotImplementedError(f"graph encoder: {key!r} has a grouped axis 1 and a block "
                                      "axis 0")
        width = k0 * k1 * _numel(shape[2:])
        self.edge_pieces.append(Piece(kind="edge", sets=(dst_set, src_set), features=width,
                                      grouped=grouped, **common))

    def _edges(self) -> tuple:
        srcs, dsts, counts = [], [], []
        for piece in self.edge_pieces:
            out, inp = (self.sets[s] for s in piece.sets)
            rows = torch.arange(out.size)
            if piece.grouped:
                m = piece.grouped
                rows_per_group = out.size // (inp.size // m)
                cols = (rows // rows_per_group)[:, None] * m + torch.arange(m)
            else:
                cols = torch.arange(inp.size).expand(out.size, inp.size)
            dsts.append(out.offset + rows[:, None].expand_as(cols).reshape(-1))
            srcs.append(inp.offset + cols.reshape(-1))
            counts.append(cols.numel())
        for group_name, perm in self.block_edges:
            blocks, member = self.sets[f"blocks:{group_name}"], self.sets[perm]
            m = member.size // blocks.size
            srcs.append(blocks.offset + torch.arange(member.size) // m)
            dsts.append(member.offset + torch.arange(member.size))
            counts.append(member.size)
        cat = (lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long))
        return cat(srcs), cat(dsts), counts

    # values -------------------------------------------------------------------------------
    def node_values(self, state_dict: Mapping) -> list:
        """Raw features of each node piece from a batch of networks: ``[(B, n, k)]``."""
        out = []
        for piece in self.node_pieces:
            x = _segment(state_dict[piece.key], piece)
            n = self.sets[piece.sets[0]].size
            x = x.movedim(piece.unit_axis + 1, 1)
            out.append(x.reshape(x.shape[0], n, -1))
        return out

    def edge_values(self, state_dict: Mapping) -> list:
        """Raw features of each edge piece: ``[(B, E_piece, features)]``, in edge order."""
        out = []
        for piece in self.edge_pieces:
            x = _segment(state_dict[piece.key], piece)
            n_out, n_in = (self.sets[s].size for s in piece.sets)
            b = x.shape[0]
            if piece.grouped:
                out.append(x.reshape(b, n_out * x.shape[2], -1))
                continue
            k0, k1 = x.shape[1] // n_out, x.shape[2] // n_in
            x = x.reshape(b, n_out, k0, n_in, k1, -1).permute(0, 1, 3, 2, 4, 5)
            out.append(x.reshape(b, n_out * n_in, -1))
        return out


def _segment(x: torch.Tensor, piece: Piece) -> torch.Tensor:
    """The piece's entries of a batched tensor ``x`` (B, *shape)."""
    return x if piece.axis is None else x.narrow(piece.axis + 1, piece.start, piece.length)


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out

