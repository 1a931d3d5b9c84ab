r"""Weight matching's coordinate descent over plain perms and block groups, batched over pairs.

A sweep visits *units* in a random order: a plain perm, or a whole block group (attention
heads, convolution groups; ``deepalign.weightspace.BlockGroup``). ``descent_units`` lists
them; a plain spec has one unit per perm, in ``spec.perm_names`` order.

- A plain perm is replaced by the exact linear assignment on its similarity matrix.
- A block group whose members never share a tensor (heads: the q/k perm and the v perm) has
  a linear objective :math:`\sum_k \langle C_k, P_k \rangle` given the perms outside it,
  so ``block_assignment`` solves it exactly: the best block permutation together with the
  best permutations inside the blocks.
- A block group whose members share a tensor (a grouped convolution's in- and out-channel
  perms: :math:`\langle A, P_{out} B P_{in}^T \rangle` is bilinear) gets the same joint step
  from the matrices at the current perms, but that is only a linearisation. Its members are
  moved one at a time and the exact change of the objective is summed along the way
  (:math:`\Delta = \sum_k \langle C_k^{(k)}, P_k' - P_k \rangle`, where ``C_k^{(k)}`` is
  member ``k``'s matrix after members ``< k`` moved). Pairs whose Δ is not above the
  improvement threshold are moved back and take inner-only steps instead: member by member,
  the best permutations inside the blocks with the block permutation kept, which is exact
  for each member given the rest. Either way the objective never decreases.
"""
from __future__ import annotations

import numpy as np
import torch

from deepalign.baselines._block_assignment import (assignment_value, block_assignment,
                                                   block_permutation, inner_assignment)
from deepalign.ops import linear_assignment
from deepalign.weightspace._spec import PermutationSpec
from deepalign.weightspace._structure import BlockGroup

IMPROVEMENT_THRESHOLD = 1e-12


def descent_units(spec: PermutationSpec) -> list:
    """What one sweep visits, in the order sweep orders index: every perm outside block
    groups by name, and each ``BlockGroup`` in place of its first member."""
    units = []
    for name in spec.perm_names:
        group = spec.block_group_of(name)
        if group is None:
            units.append(name)
        elif group not in units:
            units.append(group)
    return units


class Descent:
    """Coordinate descent of a batch of pairs, each pair on its own schedule.

    Every pair walks through its own sweeps (orders from ``rngs``) and never waits for the
    others: each round solves one unit, the one most pairs visit next, for all of them at
    once. A visit whose similarity matrices did not change since that unit's last solve
    would return the same assignment again, so it is skipped as "no improvement": the
    results equal the plain algorithm's, pair by pair.

    Parameters
    ----------
    similarity : SimilarityMatrices
    perms : dict of str to Tensor, each (W, n)
        Updated in place.
    units : list of (str or BlockGroup)
        ``descent_units(spec)``.
    rngs : list of numpy Generator
        One per pair: sweep ``s`` visits ``rngs[i].permutation(len(units))``.
    max_iter : int
    """

    def __init__(self, similarity, perms, units, rngs, max_iter):
        self.similarity, self.perms, self.units = similarity, perms, units
        self.rngs, self.max_iter = rngs, max_iter
        width, n = len(rngs), len(units)
        self.device = next(iter(perms.values())).device
        self.order = np.zeros((width, n), dtype=np.int64)
        self.pos = np.full(width, n)  # at the end of "sweep 0", so that sweep 1 starts
        self.sweeps = np.zeros(width, dtype=np.int64)
        self.improved = np.ones(width, dtype=bool)
        self.active = np.ones(width, dtype=bool)
        self.stale = np.ones((n, width), dtype=bool)
        unit_of = {}
        for u, unit in enumerate(units):
            for name in (unit.perms if isinstance(unit, BlockGroup) else (unit,)):
                unit_of[name] = u
        self.affected = {p: np.array(sorted({unit_of[q] for q in similarity.affected(p)}),
                                     dtype=np.int64) for p in unit_of}
        # members sharing a tensor make a group's joint step a linearisation (module docstring)
        self.coupled = {u: any(q in unit.perms for p in unit.perms
                               for q in similarity.affected(p))
                        for u, unit in enumerate(units) if isinstance(unit, BlockGroup)}

    def run(self, bar) -> None:
        """Descend until every pair stopped; ``bar`` counts the pairs that stopped."""
        while True:
            head = self._advance(bar)
            if not self.active.any():
                return
            u = int(np.bincount(head[self.active], minlength=len(self.units)).argmax())
            idx = np.flatnonzero(self.active & (head == u))
            pairs = torch.from_numpy(idx).to(self.device)
            self.stale[u, idx] = False
            if isinstance(self.units[u], BlockGroup):
                gain = self._solve_group(u, pairs)
            else:
                gain = self._solve_perm(self.units[u], pairs)
            self.improved[idx] |= (gain > IMPROVEMENT_THRESHOLD).cpu().numpy()
            self.pos[idx] += 1

    def _advance(self, bar) -> np.ndarray:
        """Move every active pair on to its next visit that needs a solve; return the unit
        each pair visits next."""
        rows = np.arange(len(self.pos))
        n = len(self.units)
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

    def _move(self, name: str, pairs: torch.Tensor, new: torch.Tensor) -> None:
        """Set perm ``name`` of ``pairs`` to ``new`` and keep the matrices current."""
        old = self.perms[name][pairs]
        self.perms[name][pairs] = new
        moved = self.similarity.update(name, pairs, old)
        self.stale[self.affected[name][:, None], moved.cpu().numpy()] = True

    def _solve_perm(self, name: str, pairs: torch.Tensor) -> torch.Tensor:
        """Exact assignment for a plain perm; returns each pair's gain (G,)."""
        cost = self.similarity.get(name, pairs)
        old = self.perms[name][pairs]
        new = linear_assignment(cost, maximize=True)
        gain = assignment_value(cost, new) - assignment_value(cost, old)
        self._move(name, pairs, new)
        return gain

    def _solve_group(self, u: int, pairs: torch.Tensor) -> torch.Tensor:
        """The hierarchical step for block group ``u`` (module docstring); returns each
        pair's gain (G,), the exact change of the objective."""
        group = self.units[u]
        costs = [self.similarity.get(p, pairs) for p in group.perms]
        old = [self.perms[p][pairs] for p in group.perms]
        new, _, _ = block_assignment(costs, group.blocks)
        if not self.coupled[u]:
            gain = sum(assignment_value(c, q) - assignment_value(c, p)
                       for c, p, q in zip(costs, old, new))
            for name, q in zip(group.perms, new):
                self._move(name, pairs, q)
            return gain
        gain = torch.zeros(len(pairs), dtype=torch.float64, device=self.device)
        for k, (name, q) in enumerate(zip(group.perms, new)):
            cost = costs[0] if k == 0 else self.similarity.get(name, pairs)
            gain += assignment_value(cost, q) - assignment_value(cost, old[k])
            self._move(name, pairs, q)
        back = gain <= IMPROVEMENT_THRESHOLD
        if not back.any():
            return gain
        sub = pairs[back]
        for name, p in reversed(list(zip(group.perms, old))):
            self._move(name, sub, p[back])
        gain[back] = 0.0
        s = block_permutation(old[0][back], group.blocks)
        for name in group.perms:  # inner-only steps, each exact given the rest
            cost = self.similarity.get(name, sub)
            current = self.perms[name][sub]
            q = inner_assignment(cost, s, group.blocks)
            gain[back] += assignment_value(cost, q) - assignment_value(cost, current)
            self._move(name, sub, q)
        return gain
