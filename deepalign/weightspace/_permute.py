"""Applying hard and soft permutations to (batches of) state_dicts."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from deepalign.weightspace._pairs import as_batch, ranks_of
from deepalign.weightspace._spec import PermutationSpec
from deepalign.weightspace._structure import GroupedAxis, segment_index, segment_matrix


def batch_size_of(state_dict: Mapping, spec: PermutationSpec, name: str = "state_dict"):
    """``(B or None, perm sizes)`` of a single or stacked state_dict, checked against the spec.

    Errors name ``name`` and the parameter (missing or unexpected entries, ranks, sizes,
    NaN/inf values).
    """
    stacked, batch = as_batch(state_dict, ranks_of(spec), name)
    try:
        return batch, spec.check(stacked, batched=True)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def classify_perms(perms: Mapping, sizes: Mapping) -> tuple:
    """Validate a perm set against the perm sizes; return ``(batch or None, {name: is_hard})``."""
    if not isinstance(perms, Mapping):
        raise TypeError(f"perms must be a dict of str to Tensor, got {type(perms).__name__}")
    unknown = sorted(set(perms) - set(sizes))
    missing = sorted(set(sizes) - set(perms))
    if unknown or missing:
        raise ValueError(f"perms must have exactly the spec's perm names; missing {missing}, "
                         f"unknown {unknown}")
    batches, hard = set(), {}
    for name, p in perms.items():
        n = sizes[name]
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"perms[{name!r}] must be a Tensor, got {type(p).__name__}")
        hard[name] = not (p.is_floating_point() or p.is_complex())
        rank = 1 if hard[name] else 2
        if p.dim() not in (rank, rank + 1) or p.shape[-1] != n or p.shape[-rank] != n:
            form = "(n,) or (B, n) int64" if hard[name] else "(n, n) or (B, n, n) float"
            raise ValueError(f"perms[{name!r}] must be {form} with n = {n}, got "
                             f"{tuple(p.shape)} {p.dtype}")
        if p.dim() == rank + 1:
            batches.add(p.shape[0])
        if hard[name]:
            expected = torch.arange(n, device=p.device).expand_as(p)
            if not torch.equal(torch.sort(p, dim=-1).values, expected):
                raise ValueError(f"perms[{name!r}] is not a permutation of 0..{n - 1}")
        elif not torch.isfinite(p).all():
            raise ValueError(f"perms[{name!r}] contains NaN or inf")
    if len(batches) > 1:
        raise ValueError(f"perms disagree on the batch size: {sorted(batches)}")
    return (batches.pop() if batches else None), hard


def permute_axis(x: torch.Tensor, axis: int, perm: torch.Tensor) -> torch.Tensor:
    """Permute one axis of a batch of tensors.

    Parameters
    ----------
    x : Tensor, shape (Bx, *shape)
        ``Bx`` is 1 or the batch size; ``axis`` indexes ``shape`` (not counting ``Bx``).
    perm : Tensor, shape (Bp, n) int64 (hard) or (Bp, n, n) float (soft)
        ``shape[axis]`` must be a multiple ``k * n``; each of the ``n`` entries owns a block of
        ``k`` consecutive positions (``k = 1`` for an ordinary axis).

    Returns
    -------
    Tensor, shape (max(Bx, Bp), *shape)
        ``new[i] = old[perm[i]]`` (hard) or ``new = perm @ old`` (soft) along ``axis``.
    """
    n = perm.shape[-1]
    moved = x.movedim(axis + 1, 1)
    flat = moved.reshape(moved.shape[0], n, -1)
    if perm.is_floating_point():
        out = perm.to(flat.dtype) @ flat
    else:
        batch = max(flat.shape[0], perm.shape[0])
        index = perm[:, :, None].expand(batch, n, flat.shape[2])
        out = torch.gather(flat.expand(batch, -1, -1), 1, index)
    return out.reshape(out.shape[0], *moved.shape[1:]).movedim(1, axis + 1)


def permute_grouped_axis(x: torch.Tensor, axis: int, perm: torch.Tensor) -> torch.Tensor:
    """Permute the grouped input axis of a grouped convolution weight whose rows (axis 0)
    are already permuted: row ``o`` of group ``g`` gathers with the inner permutation of
    group ``g`` of ``perm``.

    Parameters
    ----------
    x : Tensor, shape (Bx, C_out, m, ...)
    perm : Tensor, shape (Bp, G * m) int64, block-structured with G blocks, or (Bp, G * m,
        G * m) float, block diagonal (a soft perm that keeps every channel in its group):
        row ``o`` of group ``g`` becomes ``P_g @ x[o]`` with ``P_g`` diagonal block ``g``
    """
    if perm.is_floating_point():
        return _soft_grouped_axis(x, axis, perm)
    m = x.shape[axis + 1]
    groups = perm.shape[-1] // m
    rows = x.shape[1]
    inner = (perm.reshape(perm.shape[0], groups, m) % m).repeat_interleave(rows // groups, 1)
    index = inner.reshape(*inner.shape, *(1,) * (x.dim() - 3))
    moved = x.movedim(axis + 1, 2)
    batch = max(moved.shape[0], index.shape[0])
    index = index.expand(batch, *moved.shape[1:])
    out = torch.gather(moved.expand(batch, *moved.shape[1:]), 2, index)
    return out.movedim(2, axis + 1)


def _soft_grouped_axis(x: torch.Tensor, axis: int, perm: torch.Tensor) -> torch.Tensor:
    m = x.shape[axis + 1]
    groups = perm.shape[-1] // m
    grid = perm.reshape(perm.shape[0], groups, m, groups, m)
    across = grid.detach().abs().sum((2, 4)) * ~torch.eye(groups, dtype=torch.bool,
                                                           device=perm.device)
    if across.any():
        raise ValueError("a soft perm on the grouped axis of a grouped convolution must be "
                         "block diagonal: it cannot move channels across groups")
    blocks = grid.diagonal(dim1=1, dim2=3).movedim(-1, 1)  # (Bp, G, m, m)
    moved = x.movedim(axis + 1, 2)  # (Bx, C_out, m, rest...)
    rows = moved.reshape(moved.shape[0], groups, moved.shape[1] // groups, m, -1)
    batch = max(rows.shape[0], blocks.shape[0])
    out = torch.einsum("bgji,bgoir->bgojr", blocks.to(rows.dtype).expand(batch, -1, -1, -1),
                       rows.expand(batch, -1, -1, -1, -1))
    return out.reshape(out.shape[0], *moved.shape[1:]).movedim(2, axis + 1)


def permute_tensor(x: torch.Tensor, axes: tuple, perms: Mapping, skip_axis=None) -> torch.Tensor:
    """Apply every permutation of ``axes`` (one spec entry) to a batched tensor ``x``.

    ``x`` has shape (Bx, *shape) and ``perms`` holds batched perms (leading dim 1 or B).
    ``skip_axis`` leaves one axis alone (weight matching's "all other permutations").
    Concatenated axes apply their segments' perms side by side; a grouped axis is permuted
    after axis 0 (its rows), so it cannot be combined with ``skip_axis=0``.
    """
    for axis, item in enumerate(axes):
        if item is None or axis == skip_axis:
            continue
        if isinstance(item, str):
            x = permute_axis(x, axis, perms[item])
        elif isinstance(item, GroupedAxis):
            if skip_axis == 0:
                raise NotImplementedError("a grouped axis needs its rows permuted first")
            x = permute_grouped_axis(x, axis, perms[item.perm])
        else:
            soft = perms[item[0]].is_floating_point()
            joined = segment_matrix(perms, item) if soft else segment_index(perms, item)
            x = permute_axis(x, axis, joined)
    return x


def permute(state_dict: Mapping, spec: PermutationSpec, perms: Mapping) -> dict:
    """Apply a permutation set to a state_dict or to a batch of them.

    Every tensor named by the spec (BatchNorm running statistics included) has each of its
    axes permuted by the permutation the spec puts there; tensors and axes without one are
    copied. The input is never modified.

    Parameters
    ----------
    state_dict : dict of str to Tensor
        One state_dict, or a batch with a leading dimension B on every tensor.
    spec : PermutationSpec
    perms : dict of str to Tensor
        Per permutation name: hard int64 ``(n,)`` / ``(B, n)`` (``new[i] = old[p[i]]``) or soft
        float ``(n, n)`` / ``(B, n, n)`` (``new = P @ old`` along the axis). Unbatched perms
        are shared by the whole batch; batched perms on a single state_dict give a batch.

    Returns
    -------
    dict of str to Tensor
        Same keys; batched (leading B) when the state_dict or any perm is batched.
    """
    sd_batch, sizes = batch_size_of(state_dict, spec)
    perm_batch, hard = classify_perms(perms, sizes)
    spec.check_structure(perms)
    if None not in (sd_batch, perm_batch) and sd_batch != perm_batch:
        raise ValueError(f"state_dict has batch size {sd_batch} but perms have {perm_batch}")
    as_batch = {name: p[None] if p.dim() == (1 if hard[name] else 2) else p
                for name, p in perms.items()}
    out = {}
    for key, value in state_dict.items():
        y = permute_tensor(value if sd_batch is not None else value[None],
                           spec.axes_to_perm[key], as_batch)
        if sd_batch is None and perm_batch is None:
            y = y[0]
        elif y.shape[0] == 1 and perm_batch is not None:
            y = y.expand(perm_batch, *y.shape[1:])
        # untouched tensors come back as views of the input: copy, so the result owns its memory
        out[key] = y.clone() if y.data_ptr() == value.data_ptr() else y.contiguous()
    return out
