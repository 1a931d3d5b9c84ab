"""Structured parts of a permutation symmetry: concatenated and grouped axes, block groups.

Plain specs put one permutation on a whole axis. Transformers and grouped convolutions need
three more forms (docs/CONTRACTS.md, "Structured groups"):

- a **concatenated axis** holds several permutations side by side (GPT-2's ``c_attn`` and
  ``nn.MultiheadAttention.in_proj_weight`` pack q, k and v along one axis): the axis item is a
  tuple of perm names, one segment each, in order;
- a **grouped axis** is the input-channel axis of a grouped convolution, of size ``n / G``:
  row ``o`` (axis 0) of group ``g`` reads input channels ``g*m .. g*m+m-1``, so when the input
  perm moves whole groups and permutes inside them, each row gathers with the inner
  permutation of the group it now reads;
- a **block group** ties perms that are all built from one permutation of ``G`` blocks
  (attention heads, convolution groups) composed with independent permutations inside each
  block: member ``p`` of size ``G * m`` satisfies ``p[b*m + j] = s[b]*m + t_b[j]`` with the
  shared ``s``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupedAxis:
    """The input-channel axis of a grouped convolution, permuted within groups by ``perm``.

    ``perm`` (size ``n``) must belong to a block group with ``G = n / axis size`` blocks, and
    axis 0 of the same tensor must carry a perm of that block group.
    """
    perm: str


@dataclass(frozen=True)
class BlockGroup:
    """Perms built from one shared permutation of ``blocks`` blocks (module docstring).

    Attributes
    ----------
    name : str
        Names the block permutation (``"H_<module>"`` for heads, ``"G_<module>"`` for groups).
    kind : str
        ``"heads"`` (attention) or ``"groups"`` (grouped convolution).
    blocks : int
    perms : tuple of str
        The member perms; each one's size is a multiple of ``blocks``.
    """
    name: str
    kind: str
    blocks: int
    perms: tuple

    def __post_init__(self):
        if self.kind not in ("heads", "groups"):
            raise ValueError(f"block group {self.name!r}: kind must be 'heads' or 'groups', "
                             f"got {self.kind!r}")
        if not isinstance(self.blocks, int) or self.blocks < 1:
            raise ValueError(f"block group {self.name!r}: blocks must be a positive int, "
                             f"got {self.blocks!r}")
        if not self.perms or not all(isinstance(p, str) for p in self.perms):
            raise ValueError(f"block group {self.name!r}: perms must be a non-empty tuple of "
                             f"perm names, got {self.perms!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "blocks": self.blocks,
                "perms": list(self.perms)}

    @classmethod
    def from_dict(cls, data: Mapping) -> BlockGroup:
        return cls(str(data["name"]), str(data["kind"]), int(data["blocks"]),
                   tuple(data["perms"]))


def axis_perms(item) -> tuple:
    """The perm names an axis item refers to (``()`` for ``None``)."""
    if item is None:
        return ()
    if isinstance(item, str):
        return (item,)
    if isinstance(item, GroupedAxis):
        return (item.perm,)
    return tuple(item)


def normalise_item(item, where: str):
    """Check one axis item and return its canonical form (lists become tuples)."""
    if item is None or isinstance(item, (str, GroupedAxis)):
        return item
    if isinstance(item, Mapping) and set(item) == {"grouped"} and isinstance(item["grouped"], str):
        return GroupedAxis(item["grouped"])
    if isinstance(item, (tuple, list)) and len(item) >= 1 and all(
            isinstance(p, str) for p in item):
        return item[0] if len(item) == 1 else tuple(item)
    raise TypeError(f"{where} must be a perm name, None, a tuple of perm names (a concatenated "
                    f"axis) or GroupedAxis(perm), got {item!r}")


def item_to_json(item):
    """JSON form of an axis item: str, None, a list of str, or ``{"grouped": perm}``."""
    if isinstance(item, GroupedAxis):
        return {"grouped": item.perm}
    return list(item) if isinstance(item, tuple) else item


def block_structure(p: torch.Tensor, blocks: int) -> tuple:
    """Split a (batch of) block-structured hard perm(s) into ``(s, t)``.

    Returns ``s`` of shape ``(..., blocks)`` and ``t`` of shape ``(..., blocks, m)`` with
    ``p[b*m + j] = s[b]*m + t[b, j]``, or ``None`` when ``p`` is not block-structured.
    """
    m = p.shape[-1] // blocks
    grid = p.reshape(*p.shape[:-1], blocks, m)
    s = grid[..., 0] // m
    if not torch.equal(grid // m, s[..., None].expand_as(grid)):
        return None
    return s, grid % m


def compose_blocks(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Inverse of ``block_structure``: the flat perm(s) ``p[b*m + j] = s[b]*m + t[b, j]``."""
    m = t.shape[-1]
    return (s[..., None] * m + t).flatten(-2)


def random_block_perm(s: torch.Tensor, m: int, generator=None) -> torch.Tensor:
    """A uniformly random member perm of size ``len(s) * m`` whose block permutation is ``s``
    (shape ``(..., blocks)``): independent uniform permutations inside every block."""
    t = torch.rand(*s.shape, m, generator=generator).argsort(dim=-1)
    return compose_blocks(s, t)


def segment_index(perms: Mapping, names: tuple) -> torch.Tensor:
    """Index of a concatenated axis: each segment's hard perm shifted to its offset."""
    parts, offset = [], 0
    for name in names:
        parts.append(perms[name] + offset)
        offset += perms[name].shape[-1]
    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)


def segment_matrix(perms: Mapping, names: tuple) -> torch.Tensor:
    """Soft counterpart of ``segment_index``: the block-diagonal matrix of the segments."""
    mats = [perms[n] for n in names]
    lead = torch.broadcast_shapes(*(p.shape[:-2] for p in mats))
    total = sum(p.shape[-1] for p in mats)
    out = mats[0].new_zeros(*lead, total, total)
    offset = 0
    for p in mats:  # a few segments; every batch element at once
        n = p.shape[-1]
        out[..., offset:offset + n, offset:offset + n] = p
        offset += n
    return out
