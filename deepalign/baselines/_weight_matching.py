"""Weight matching (Git Re-Basin, Ainsworth et al., ICLR 2023), batched over many pairs."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from deepalign.baselines._similarity import SimilarityMatrices
from deepalign.ops import linear_assignment
from deepalign.weightspace._pairs import broadcast_pair, ranks_of
from deepalign.weightspace._perm_sets import identity_permutations
from deepalign.weightspace._permute import classify_perms, permute
from deepalign.weightspace._spec import PermutationSpec

IMPROVEMENT_THRESHOLD = 1e-12


def sweep_rng(seed: int, pair_index: int) -> np.random.Generator:
    """Random source of one pair's sweep orders: sweep ``s`` visits the ``s``-th
    ``sweep_rng(seed, b).permutation(n_perms)``. It does not depend on the batch the pair sits
    in, so a one-pair-at-a-time implementation can replay it exactly."""
    return np.random.default_rng([seed, pair_index])


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
    """Coordinate descent of a batch of pairs, each pair on its own schedule.

    Every pair walks through its own sweeps (orders from ``sweep_rng``) and never waits for
    the others: each round solves one perm, the one most pairs visit next, for all of them
    at once. A visit whose similarity matrix did not change since that perm's last solve
    would return the same assignment again, so it is skipped as "no improvement": the results
    equal the plain algorithm's, pair by pair.
    """

    def __init__(self, similarity, perms, names, rngs, max_iter):
        self.similarity, self.perms, self.names = similarity, perms, names
        self.rngs, self.max_iter = rngs, max_iter
        width, n = len(rngs), len(names)
        self.device = next(iter(perms.values())).device
        self.order = np.zeros((width, n), dtype=np.int64)
        self.pos = np.full(width, n)  # at the end of "sweep 0", so that sweep 1 starts
        self.sweeps = np.zeros(width, dtype=np.int64)
        self.improved = np.ones(width, dtype=bool)
        self.active = np.ones(width, dtype=bool)
        self.stale = np.ones((n, width), dtype=bool)
        self.affected = {p: np.array([names.index(q) for q in similarity.affected(p)],
                                     dtype=np.int64) for p in names}

    def run(self, bar) -> None:
        """Descend until every pair stopped; ``bar`` counts the pairs that stopped."""
        while True:
            head = self._advance(bar)
            if not self.active.any():
                return
            q = int(np.bincount(head[self.active], minlength=len(self.names)).argmax())
            idx = np.flatnonzero(self.active & (head == q))
            self.improved[idx] |= self._solve(q, idx)
            self.pos[idx] += 1

    def _advance(self, bar) -> np.ndarray:
        """Move every active pair on to its next visit that needs a solve; return the perm
        each pair visits next."""
        rows = np.arange(len(self.pos))
        n = len(self.names)
        while True:
            ended = self.active & (self.pos == n)
            stop = ended & (~self.improved | (self.sweeps >= self.max_iter))
            self.active &= ~stop
            bar.update(int(stop.sum()))
            for i in np.flatnonzero(ended & ~stop):
                self.order[i] = self.rngs[i].permutation(n)
            restart = ended & ~stop
            self.pos[restart], self.improved[restart] = 0, False
            self.sweeps[restart] += 1
            head = self.order[rows, np.minimum(self.pos, n - 1)]
            skip = self.active & ~self.stale[head, rows]
            if not skip.any():
                return head
            self.pos[skip] += 1

    def _solve(self, q: int, idx: np.ndarray) -> np.ndarray:
        """Exact assignment for perm ``q`` of pairs ``idx``; returns which improved."""
        name = self.names[q]
        pairs = torch.from_numpy(idx).to(self.device)
        cost = self.similarity.get(name, pairs)
        old = self.perms[name][pairs]
        new = linear_assignment(cost, maximize=True)
        values = cost.gather(2, torch.stack([old, new], 2)).sum(1)
        self.perms[name][pairs] = new
        self.stale[q, idx] = False
        moved = self.similarity.update(name, pairs, old)
        self.stale[self.affected[name][:, None], moved.cpu().numpy()] = True
        return (values[:, 1] > values[:, 0] + IMPROVEMENT_THRESHOLD).cpu().numpy()


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

    Each pair follows its own schedule; all pairs that visit the same permutation next share
    one batched ``linear_assignment`` call. The similarity matrices are not rebuilt per solve
    but updated by the rows of the perm that moved (``SimilarityMatrices``), in the weights'
    dtype and accumulated in float64 as the reference numpy code does. A solve whose matrix
    did not change since that permutation's last solve is skipped: it would return the same
    assignment, so results equal the plain algorithm's.

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
        Show a tqdm bar over the pairs that have stopped.

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
    similarity = SimilarityMatrices(a, b, spec, sizes, perms)
    with tqdm(total=width, desc="weight matching", unit="pair", disable=not progress) as bar:
        _Descent(similarity, perms, spec.perm_names, rngs, max_iter).run(bar)
    return perms if batch is not None else {k: p[0] for k, p in perms.items()}
