"""Weight matching (Git Re-Basin, Ainsworth et al., ICLR 2023), batched over many pairs."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from deepalign.ops import linear_assignment
from deepalign.weightspace._pairs import broadcast_pair, ranks_of
from deepalign.weightspace._perm_sets import identity_permutations
from deepalign.weightspace._permute import classify_perms, permute, permute_tensor
from deepalign.weightspace._spec import PermutationSpec

IMPROVEMENT_THRESHOLD = 1e-12


def sweep_rng(seed: int, pair_index: int) -> np.random.Generator:
    """Random source of one pair's sweep orders: sweep ``s`` visits the ``s``-th
    ``sweep_rng(seed, b).permutation(n_perms)``. It does not depend on the batch the pair sits
    in, so a one-pair-at-a-time implementation can replay it exactly."""
    return np.random.default_rng([seed, pair_index])


def matching_cost(a: Mapping, b: Mapping, spec: PermutationSpec, perms: Mapping, name: str,
                  n: int) -> torch.Tensor:
    r"""Similarity matrix of one permutation given all the others, for a batch of pairs.

    .. math:: S_{ij} = \sum_{(t, k) \in \text{axes}(P)} \langle A_t[i], \pi_{-k}(B_t)[j] \rangle

    where ``A_t[i]`` is slice ``i`` of tensor ``t`` along axis ``k`` (a block of slices for a
    block axis) and ``\pi_{-k}(B_t)`` is ``B_t`` with every other permutation applied.

    Parameters
    ----------
    a, b : dict of str to Tensor, each (G, ...)
    perms : dict of str to Tensor, each (G, n_p)
    name : str
        The permutation to solve for; ``n`` its size.

    Returns
    -------
    Tensor, shape (G, n, n)
    """
    batch = next(iter(a.values())).shape[0]
    first = a[spec.perm_to_axes[name][0][0]]
    cost = torch.zeros(batch, n, n, dtype=first.dtype, device=first.device)
    for key, axis in spec.perm_to_axes[name]:
        wa = a[key].movedim(axis + 1, 1).reshape(batch, n, -1)
        wb = permute_tensor(b[key], spec.axes_to_perm[key], perms, skip_axis=axis)
        cost += wa @ wb.movedim(axis + 1, 1).reshape(batch, n, -1).mT
    return cost


def weight_matching_objective(sd_a: Mapping, sd_b: Mapping, spec: PermutationSpec,
                              perms: Mapping) -> torch.Tensor:
    r"""Weight-matching objective :math:`\sum_t \langle A_t, \pi(B)_t \rangle` per pair.

    Every floating tensor counts (BatchNorm running statistics included, as in the PyTorch
    ports); tensors without permuted axes add a constant. Returns a float64 scalar, or
    shape (B,) for batches.
    """
    a, b, batch = broadcast_pair(sd_a, sd_b, ranks_of(spec))
    permuted = permute(b, spec, perms)
    total = sum((a[k].double() * permuted[k].double()).flatten(1).sum(1)
                for k in a if a[k].is_floating_point())
    return total if batch is not None else total[0]


class _Descent:
    """Coordinate-descent state of a batch of pairs.

    A permutation's cost matrix depends only on the other permutations sharing its tensors;
    a solve whose inputs did not change since that permutation's last solve would return the
    same assignment again, so it is skipped (the result is identical, only faster).
    """

    def __init__(self, a, b, spec, sizes, perms):
        self.a, self.b, self.spec, self.sizes, self.perms = a, b, spec, sizes, perms
        width = next(iter(perms.values())).shape[0]
        device = next(iter(perms.values())).device
        self.active = torch.ones(width, dtype=torch.bool, device=device)
        self.deps = {q: sorted({p for key, axis in spec.perm_to_axes[q]
                                for ax, p in enumerate(spec.axes_to_perm[key])
                                if p is not None and ax != axis}) for q in spec.perm_names}
        self.version = {q: torch.zeros(width, dtype=torch.long, device=device)
                        for q in spec.perm_names}
        self.seen = {q: torch.zeros(width, len(self.deps[q]), dtype=torch.long, device=device)
                     for q in spec.perm_names}
        self.solved = {q: torch.zeros(width, dtype=torch.bool, device=device)
                       for q in spec.perm_names}

    def sweep(self, order: torch.Tensor) -> bool:
        """One sweep; ``order`` (B, n_perms) per pair. Returns whether any pair is active."""
        improved = torch.zeros_like(self.active)
        for step in range(order.shape[1]):
            for q, name in enumerate(self.spec.perm_names):
                current = torch.stack([self.version[d] for d in self.deps[name]], 1) \
                    if self.deps[name] else self.seen[name]
                stale = ~self.solved[name] | (self.seen[name] != current).any(1)
                idx = torch.nonzero(self.active & (order[:, step] == q) & stale).flatten()
                if len(idx) > 0:
                    improved[idx] |= self.solve(name, idx)
                    self.seen[name][idx] = current[idx]
                    self.solved[name][idx] = True
        self.active &= improved
        return bool(self.active.any())

    def solve(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """Exact assignment for perm ``name`` of pairs ``idx``; returns which improved."""
        keys = {key for key, _ in self.spec.perm_to_axes[name]}
        # early sweeps solve every pair: skip the gathers (copies of all weights) then
        every = len(idx) == len(self.active)
        take = (lambda t: t) if every else (lambda t: t[idx])  # noqa: E731
        sub = {k: take(p) for k, p in self.perms.items()}
        cost = matching_cost({k: take(self.a[k]) for k in keys},
                             {k: take(self.b[k]) for k in keys}, self.spec, sub, name,
                             self.sizes[name])
        new = linear_assignment(cost, maximize=True)
        # float64 sums: rounding must not make an equal-cost tie look like progress
        old_value = cost.double().gather(2, sub[name][:, :, None]).sum((1, 2))
        new_value = cost.double().gather(2, new[:, :, None]).sum((1, 2))
        self.version[name][idx] += (new != sub[name]).any(1).long()
        self.perms[name][idx] = new  # after the comparison: ``sub`` may alias the perms
        return new_value > old_value + IMPROVEMENT_THRESHOLD


def weight_matching(sd_a: Mapping, sd_b: Mapping, spec: PermutationSpec, max_iter: int = 100,
                    seed: int = 0, init: Mapping | None = None,
                    progress: bool = False) -> dict:
    r"""Align B to A by weight matching, for one pair or a batch of pairs at once.

    Coordinate descent on :math:`\max_\pi \sum_t \langle A_t, \pi(B)_t \rangle`
    (Ainsworth et al., ICLR 2023, Alg. 1): each sweep visits the permutations in a random
    order (per pair, from ``seed`` and the pair index, see ``sweep_rng``) and replaces each
    by the exact linear assignment on its similarity matrix (``matching_cost``) with all
    others fixed. A pair stops after the first sweep in which no permutation improved its
    term by more than 1e-12, or after ``max_iter`` sweeps. The objective never decreases.

    All pairs visiting the same permutation at a step share one batched cost computation and
    one batched ``linear_assignment`` call. A solve whose cost matrix cannot have changed since
    that permutation's last solve (none of the permutations it depends on moved) is skipped:
    it would return the same assignment, so results equal the plain algorithm's.

    Parameters
    ----------
    sd_a, sd_b : dict of str to Tensor
        Single state_dicts or batches stacked along a leading dimension (B); a single one is
        broadcast against a batch. Not modified.
    spec : PermutationSpec
    max_iter : int
        Maximum number of sweeps.
    seed : int
    init : dict of str to Tensor, optional
        Starting perms (warm start); identity by default.
    progress : bool
        Show a tqdm bar over sweeps.

    Returns
    -------
    dict of str to Tensor
        Hard perms, int64 ``(n,)`` or ``(B, n)``: ``permute(sd_b, spec, perms)`` is aligned
        to ``sd_a``.
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    a, b, batch = broadcast_pair(sd_a, sd_b, ranks_of(spec))
    sizes = spec.check(a, batched=True)
    width = next(iter(a.values())).shape[0]
    device = next(iter(a.values())).device
    if init is None:
        perms = identity_permutations(sizes, width, device)
    else:
        init_batch, hard = classify_perms(init, sizes)
        if not all(hard.values()) or init_batch not in (None, batch):
            raise ValueError("init must be hard perms (n,) or (B, n) matching the pairs")
        perms = {k: p.expand(width, -1).clone().to(device) for k, p in init.items()}
    rngs = [sweep_rng(seed, i) for i in range(width)]
    state = _Descent(a, b, spec, sizes, perms)
    for _ in tqdm(range(max_iter), desc="weight matching", disable=not progress):
        order = np.stack([rng.permutation(len(spec.perm_names)) for rng in rngs])
        if not state.sweep(torch.as_tensor(order, device=device)):
            break
    return perms if batch is not None else {k: p[0] for k, p in perms.items()}
