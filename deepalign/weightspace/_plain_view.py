"""The plain view of a structured spec: every axis carries one whole perm.

Algorithms written for plain specs (weight matching's similarities, activation statistics,
soft permutations) run on this view unchanged: a concatenated axis is split into one tensor
per segment, and a grouped convolution weight becomes the dense block-diagonal weight it
stands for (zeros between groups), whose input axis is an ordinary axis of the input perm.
Perms of the view are perms of the original spec (same names and sizes), and
``<A, permute(B)>`` is the same number in both (the zeros never meet a weight).
Block groups stay: their perms must still be block-structured.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from deepalign.weightspace._pairs import as_batch, ranks_of
from deepalign.weightspace._spec import PermutationSpec
from deepalign.weightspace._structure import GroupedAxis


def _dense_grouped(w: torch.Tensor, axis: int, groups: int) -> torch.Tensor:
    """Grouped weight (B, C_out, ..., m at ``axis``, ...) -> the block-diagonal dense weight
    with ``groups * m`` entries at ``axis`` (row ``o`` of group ``g`` keeps its ``m`` inputs at
    ``g*m .. g*m+m-1``, zeros elsewhere)."""
    rows = w.shape[1]
    owner = torch.arange(rows, device=w.device) // (rows // groups)
    mask = torch.nn.functional.one_hot(owner, groups).to(w.dtype)  # (C_out, groups)
    mask = mask.reshape(1, rows, *(1,) * (axis - 2), groups, *(1,) * (w.dim() - axis))
    return (w.unsqueeze(axis) * mask).flatten(axis, axis + 1)


def plain_view(spec: PermutationSpec, state_dict: Mapping) -> tuple:
    """The plain view of ``state_dict`` (single or batched) and its spec.

    Parameters
    ----------
    spec : PermutationSpec
    state_dict : dict of str to Tensor
        One state_dict or a batch (leading dimension B on every tensor).

    Returns
    -------
    (PermutationSpec, dict of str to Tensor)
        The view's spec (no concatenated or grouped axes; the same perms, sizes and block
        groups) and its tensors, batched like the input. A tensor with a concatenated axis
        ``k`` becomes ``"<key>@<i>"`` for its segment ``i``.
    """
    if not spec.structured_axes:
        return spec, dict(state_dict)
    stacked, batch = as_batch(state_dict, ranks_of(spec), "state_dict")
    axes, tensors = {}, {}
    for key, items in spec.axes_to_perm.items():
        value = stacked[key]
        concat = [a for a, item in enumerate(items) if isinstance(item, tuple)]
        grouped = [a for a, item in enumerate(items) if isinstance(item, GroupedAxis)]
        plain = tuple(item.perm if isinstance(item, GroupedAxis) else item for item in items)
        for a in grouped:
            n = spec.sizes[items[a].perm]
            value = _dense_grouped(value, a + 1, n // value.shape[a + 1])
        if len(concat) > 1:
            raise NotImplementedError(f"{key!r} has more than one concatenated axis")
        if not concat:
            axes[key], tensors[key] = plain, value
            continue
        a = concat[0]
        parts = value.split([spec.sizes[p] for p in items[a]], dim=a + 1)
        for i, (perm, part) in enumerate(zip(items[a], parts)):
            name = f"{key}@{i}"
            axes[name] = plain[:a] + (perm,) + plain[a + 1:]
            tensors[name] = part
    view = PermutationSpec(axes, spec.sizes, spec.block_groups)
    if batch is None:
        tensors = {k: v[0] for k, v in tensors.items()}
    return view, tensors
