"""Building, inverting and converting permutation sets (``dict[str, Tensor]``, CONTRACTS.md)."""
from __future__ import annotations

from collections.abc import Mapping

import torch


def identity_permutations(sizes: Mapping, batch_size: int | None = None,
                          device=None) -> dict:
    """The identity perm set: int64 ``(n,)`` per name, or ``(B, n)`` with ``batch_size``."""
    out = {}
    for name, n in sizes.items():
        p = torch.arange(n, device=device)
        out[name] = p if batch_size is None else p.expand(batch_size, n).clone()
    return out


def random_permutations(sizes: Mapping, batch_size: int | None = None,
                        generator: torch.Generator | None = None) -> dict:
    """Uniformly random hard perms, int64 ``(n,)`` per name or ``(B, n)`` with ``batch_size``."""
    shape = () if batch_size is None else (batch_size,)
    return {name: torch.rand(*shape, n, generator=generator).argsort(dim=-1)
            for name, n in sizes.items()}


def invert_permutations(perms: Mapping) -> dict:
    """Inverse of every hard perm (``q[p[i]] = i``), so ``permute(permute(sd, p), q) == sd``."""
    return {name: p.argsort(dim=-1) for name, p in perms.items()}


def compose_permutations(first: Mapping, second: Mapping) -> dict:
    """The perm set equal to applying ``first`` and then ``second`` (hard perms).

    ``permute(permute(sd, spec, first), spec, second) == permute(sd, spec, result)``, with
    ``result[i] = first[second[i]]``.
    """
    out = {}
    for name in first:
        a, b = torch.broadcast_tensors(first[name], second[name])
        out[name] = torch.gather(a, -1, b)
    return out


def to_soft(perms: Mapping, dtype: torch.dtype = torch.float32) -> dict:
    """One-hot matrices ``P[i, p[i]] = 1`` for hard perms, shape ``(..., n, n)``."""
    return {name: torch.nn.functional.one_hot(p, p.shape[-1]).to(dtype)
            for name, p in perms.items()}
