"""Validation and batching of (pairs of) state_dicts shared by the baselines and evaluation."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def ranks_of(reference) -> dict:
    """Unbatched rank of every tensor, from a ``PermutationSpec`` or an ``nn.Module``."""
    if isinstance(reference, torch.nn.Module):
        return {k: v.dim() for k, v in reference.state_dict().items()}
    return {k: len(axes) for k, axes in reference.axes_to_perm.items()}


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN or inf in ``x``: its extremes propagate NaN and are infinite if any entry is
    (one pass and no temporaries, unlike ``isfinite(x).all()``; the two extremes are tested
    as Python floats, since three tensor ops on 0-d tensors cost more than the pass itself on
    the small tensors of a network's state_dict)."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(x)
    return math.isfinite(low.item()) and math.isfinite(high.item())


def as_batch(state_dict: Mapping, ranks: Mapping, name: str) -> tuple:
    """Check one state_dict (or a stacked batch) and return ``(batched copy-free view, B or None)``.

    Raises ``ValueError``/``TypeError`` naming ``name`` and the parameter for missing or
    unexpected entries, wrong ranks, inconsistent batch sizes and NaN/inf values.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{name} must be a dict of str to Tensor, got {type(state_dict).__name__}")
    missing = sorted(set(ranks) - set(state_dict))
    extra = sorted(set(state_dict) - set(ranks))
    if missing or extra:
        raise ValueError(f"{name} does not fit the model/spec: missing {missing}, "
                         f"unexpected {extra}")
    batches = set()
    for key, rank in ranks.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}[{key!r}] must be a Tensor, got {type(value).__name__}")
        if value.dim() not in (rank, rank + 1):
            raise ValueError(f"{name}[{key!r}] has shape {tuple(value.shape)}, expected rank "
                             f"{rank} (or {rank + 1} with a leading batch dimension)")
        batches.add(value.shape[0] if value.dim() == rank + 1 else None)
        if value.is_floating_point() and not _all_finite(value):
            raise ValueError(f"{name}[{key!r}] contains NaN or inf")
    if len(batches) > 1:
        raise ValueError(f"{name} mixes single and batched tensors or batch sizes: "
                         f"{sorted(batches, key=str)}")
    batch = batches.pop() if batches else None
    if batch is None:
        return {k: v[None] for k, v in state_dict.items()}, None
    return dict(state_dict), batch


def broadcast_pair(sd_a: Mapping, sd_b: Mapping, ranks: Mapping) -> tuple:
    """Validate two (batches of) state_dicts of one architecture and expand to one batch.

    Returns
    -------
    (dict, dict, int or None)
        ``a`` and ``b`` with a common leading batch dimension, and the batch size of the
        result the caller should return (``None`` when both inputs were single).
    """
    a, batch_a = as_batch(sd_a, ranks, "sd_a")
    b, batch_b = as_batch(sd_b, ranks, "sd_b")
    if None not in (batch_a, batch_b) and batch_a != batch_b:
        raise ValueError(f"sd_a has {batch_a} state_dicts but sd_b has {batch_b}")
    for key in ranks:
        if a[key].shape[1:] != b[key].shape[1:]:
            raise ValueError(f"architectures differ at {key!r}: {tuple(a[key].shape[1:])} in "
                             f"sd_a vs {tuple(b[key].shape[1:])} in sd_b")
    batch = batch_a if batch_a is not None else batch_b
    width = batch or 1
    a = {k: v.expand(width, *v.shape[1:]) for k, v in a.items()}
    b = {k: v.expand(width, *v.shape[1:]) for k, v in b.items()}
    return a, b, batch


def unbatch(tensors: Mapping, batch) -> dict:
    """Drop the leading dimension of size 1 again when the inputs were single."""
    return dict(tensors) if batch is not None else {k: v[0] for k, v in tensors.items()}
