"""Weight matching's similarity matrices: from scratch, and kept current as perms change."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from deepalign.weightspace._permute import permute_tensor
from deepalign.weightspace._spec import PermutationSpec


def _term(a: torch.Tensor, b: torch.Tensor, axes: tuple, axis: int, perms: Mapping,
          n: int) -> torch.Tensor:
    """One tensor's share ``A^(k) (pi_-k B)^(k)T`` of a similarity matrix, (G, n, n), computed
    in the weights' (promoted) dtype."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    batch = a.shape[0]
    wa = a.to(dtype).movedim(axis + 1, 1).reshape(batch, n, -1)
    wb = permute_tensor(b.to(dtype), axes, perms, skip_axis=axis)
    return wa @ wb.movedim(axis + 1, 1).reshape(batch, n, -1).mT


def matching_cost(a: Mapping, b: Mapping, spec: PermutationSpec, perms: Mapping, name: str,
                  n: int) -> torch.Tensor:
    r"""Similarity matrix of one permutation given all the others, for a batch of pairs.

    .. math:: S_{ij} = \sum_{(t, k) \in \text{axes}(P)} \langle A_t[i], \pi_{-k}(B_t)[j] \rangle

    where ``A_t[i]`` is slice ``i`` of tensor ``t`` along axis ``k`` (a block of slices for a
    block axis) and ``\pi_{-k}(B_t)`` is ``B_t`` with every other permutation applied. Each
    tensor's product is computed in the weights' dtype and the products are summed in float64,
    as Git Re-Basin's numpy code does.

    Parameters
    ----------
    a, b : dict of str to Tensor, each (G, ...)
    perms : dict of str to Tensor, each (G, n_p)
    name : str
        The permutation to solve for; ``n`` its size.

    Returns
    -------
    Tensor, shape (G, n, n), float64
    """
    first = a[spec.perm_to_axes[name][0][0]]
    cost = torch.zeros(first.shape[0], n, n, dtype=torch.float64, device=first.device)
    for key, axis in spec.perm_to_axes[name]:
        cost += _term(a[key], b[key], spec.axes_to_perm[key], axis, perms, n)
    return cost


def _rows_layout(x: torch.Tensor, axis: int, n: int, other: int, n_other: int) -> torch.Tensor:
    """``x`` (W, *shape) as (W, n_other, s, n): slices of ``other`` first, ``axis`` last, the
    rest (block entries included) flattened in between."""
    y = x.movedim((other + 1, axis + 1), (1, 2))
    y = y.reshape(x.shape[0], n_other, -1, n, y.shape[2] // n, *y.shape[3:]).movedim(3, -1)
    return y.reshape(x.shape[0], n_other, -1, n).contiguous()


class _BilinearTerm:
    r"""A term whose tensor has exactly one other permuted axis, carrying perm ``p``.

    In the layout of ``_rows_layout``, :math:`T_{ij} = \sum_{r, s} A_{rsi} B_{p(r) s j}`: when
    ``p`` changes in the rows ``R`` only, ``T`` changes by
    :math:`\sum_{r \in R, s} A_{rsi} (B_{p'(r) s j} - B_{p(r) s j})`, which costs
    ``|R| / n_p`` of computing it again.
    """

    def __init__(self, a, b, axis, n, other, n_other, perm):
        dtype = torch.promote_types(a.dtype, b.dtype)
        self.n, self.n_other, self.perm = n, n_other, perm
        # one row per (pair, slice of p), so that every gather is an index_select of rows
        self.a = _rows_layout(a.to(dtype), axis, n, other, n_other).flatten(0, 1).flatten(1)
        self.b = _rows_layout(b.to(dtype), axis, n, other, n_other).flatten(0, 1).flatten(1)

    def _select(self, x, idx, rows):
        flat = (idx[:, None] * self.n_other + rows).flatten()
        return x.index_select(0, flat).view(len(idx), -1, self.n)

    def value(self, idx, perms):
        """``T`` of pairs ``idx`` (G,) under ``perms`` (all pairs)."""
        rows = torch.arange(self.n_other, device=idx.device).expand(len(idx), -1)
        return (self._select(self.a, idx, rows).mT
                @ self._select(self.b, idx, perms[self.perm][idx]))

    def change(self, idx, rows, old_rows, new_rows, perms):
        """Change of ``T`` for pairs ``idx`` (G,) when rows ``rows`` (G, k) of ``p`` moved from
        ``old_rows`` to ``new_rows`` (rows that did not move add exact zeros)."""
        diff = self._select(self.b, idx, new_rows) - self._select(self.b, idx, old_rows)
        return self._select(self.a, idx, rows).mT @ diff


# matrices from this many entries per pair on are read in place (_ColumnTerm): below it, the
# transposed copy of _BilinearTerm costs little memory and its row gathers are faster
_COLUMN_TERM_SIZE = 1 << 18


class _ColumnTerm:
    r"""``_BilinearTerm`` for a matrix whose rows carry the solved perm and whose columns carry
    ``p`` (a ``Linear`` weight read by its output perm): :math:`T_{ij} = \sum_r A_{ir}
    B_{j p(r)}`, gathered from the weights as they are, so that no transposed copy is kept."""

    def __init__(self, a, b, n, perm):
        dtype = torch.promote_types(a.dtype, b.dtype)
        self.a, self.b, self.n, self.perm = a.to(dtype), b.to(dtype), n, perm

    def _columns(self, x, idx, cols):
        """``x[idx[g], :, cols[g]]``: (G, n, k) for cols (G, k)."""
        if len(idx) == 1:  # a row-wise gather, several times faster than advanced indexing
            return x[int(idx[0])].index_select(1, cols[0])[None]
        rows = torch.arange(self.n, device=idx.device)
        flat = (idx[:, None, None] * self.n + rows[None, :, None]) * x.shape[2] + cols[:, None, :]
        return x.reshape(-1).take(flat)  # twice as fast as indexing with three tensors

    def value(self, idx, perms):
        return self.a[idx] @ self._columns(self.b, idx, perms[self.perm][idx]).mT

    def change(self, idx, rows, old_rows, new_rows, perms):
        diff = self._columns(self.b, idx, new_rows) - self._columns(self.b, idx, old_rows)
        return self._columns(self.a, idx, rows) @ diff.mT


class _GeneralTerm:
    """A term whose tensor has two or more other permuted axes: evaluated on both sides of a
    change."""

    def __init__(self, a, b, axes, axis, n, perm):
        self.a, self.b, self.axes, self.axis, self.n, self.perm = a, b, axes, axis, n, perm

    def value(self, idx, perms):
        return _term(self.a[idx], self.b[idx], self.axes, self.axis,
                     {p: v[idx] for p, v in perms.items()}, self.n)

    def change(self, idx, rows, old_rows, new_rows, perms):
        old = dict(perms)
        old[self.perm] = perms[self.perm].index_put((idx[:, None], rows), old_rows)
        return self.value(idx, perms) - self.value(idx, old)


class SimilarityMatrices:
    r"""The similarity matrix ``S_q`` (``matching_cost``) of every perm for every pair, kept
    current as the perms change.

    ``S_q`` sums one term per axis carrying ``q``. Terms whose tensor has no other permuted
    axis never change: they are summed up front. The others are added when a pair first
    asks for ``S_q`` (``get``), from its perms at that time; afterwards, when perm ``p``
    changes, ``update`` adds the change of every term where ``p`` sits on another axis
    (``_BilinearTerm``, or ``_ColumnTerm`` for a matrix read by its row perm: proportional to
    the number of rows of ``p`` that moved; later sweeps move few). Terms are computed in the weights' dtype and accumulated in float64.

    Parameters
    ----------
    a, b : dict of str to Tensor, each (W, ...)
    spec : PermutationSpec
    sizes : dict of str to int
    perms : dict of str to Tensor, each (W, n_p)
        The current perms; the caller updates them in place and then calls ``update``.
    """

    def __init__(self, a: Mapping, b: Mapping, spec: PermutationSpec, sizes: Mapping,
                 perms: Mapping):
        self.perms = perms
        self.terms = {q: [] for q in spec.perm_names}  # the terms that vary, per perm
        self.dependents = {p: [] for p in spec.perm_names}
        constant = {q: [] for q in spec.perm_names}
        for q in spec.perm_names:
            for key, axis in spec.perm_to_axes[q]:
                axes = spec.axes_to_perm[key]
                others = [(ax, p) for ax, p in enumerate(axes) if p is not None and ax != axis]
                if not others:
                    constant[q].append((key, axis))
                    continue
                for p in dict.fromkeys(p for _, p in others):
                    if (len(others) == 1 and a[key].dim() == 3 and axis == 0
                            and a[key][0].numel() >= _COLUMN_TERM_SIZE):
                        term = _ColumnTerm(a[key], b[key], sizes[q], p)
                    elif len(others) == 1:
                        term = _BilinearTerm(a[key], b[key], axis, sizes[q], others[0][0],
                                             sizes[p], p)
                    else:
                        term = _GeneralTerm(a[key], b[key], axes, axis, sizes[q], p)
                    self.dependents[p].append((q, term))
                self.terms[q].append(term)
        self.matrices, self._scratch = {}, None
        for q, keys in constant.items():
            n = sizes[q]
            self.matrices[q] = torch.zeros(len(perms[q]), n, n, dtype=torch.float64,
                                           device=perms[q].device)
            for key, axis in keys:
                self.matrices[q] += self._double(_term(a[key], b[key], spec.axes_to_perm[key],
                                                       axis, perms, n))
        self.ready = {q: torch.zeros(len(m), dtype=torch.bool, device=m.device)
                      for q, m in self.matrices.items()}

    def _double(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` in float64, in a buffer reused from call to call (valid until the next
        call): a fresh float64 tensor per term costs as much again in page faults as the
        conversion, and mixed-dtype in-place adds are slower still."""
        if self._scratch is None or self._scratch.numel() < value.numel():
            self._scratch = torch.empty(value.numel(), dtype=torch.float64, device=value.device)
        return self._scratch[:value.numel()].view(value.shape).copy_(value)

    def affected(self, name: str) -> list:
        """The perms whose similarity matrix depends on perm ``name``."""
        return list(dict.fromkeys(q for q, _ in self.dependents[name]))

    def get(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """``S_name`` of pairs ``idx`` (G,): (G, n, n) float64.

        A run of consecutive pairs (one pair, or all of them) comes back as a view, which the
        next ``update`` changes: use it before moving a perm."""
        fresh = idx[~self.ready[name][idx]]
        if len(fresh) > 0:
            for term in self.terms[name]:
                value = self._double(term.value(fresh, self.perms))
                self.matrices[name].index_add_(0, fresh, value)
            self.ready[name][fresh] = True
        start = int(idx[0]) if len(idx) else 0
        if torch.equal(idx, torch.arange(start, start + len(idx), device=idx.device)):
            return self.matrices[name][start:start + len(idx)]  # a 75 MB copy at n = 3072
        return self.matrices[name][idx]

    def update(self, name: str, idx: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Perm ``name`` of pairs ``idx`` (G,) moved from ``old`` (G, n) to its current value.

        Returns the pairs that moved: their matrices of the perms ``affected(name)`` changed.
        """
        new = self.perms[name][idx]
        moved = new != old
        counts = moved.sum(1).tolist()
        groups = _padding_groups(counts)
        for group in groups:
            k = max(counts[i] for i in group)
            group = torch.tensor(group, device=idx.device)
            # each pair's moved rows first; the padding up to k is rows that did not move
            rows = torch.argsort(moved[group].to(torch.uint8), dim=1, descending=True,
                                 stable=True)[:, :k]
            for q, term in self.dependents[name]:
                ready = self.ready[q][idx[group]]  # the others are computed when first asked
                sub, part = group[ready], rows[ready]
                if len(sub) == 0:
                    continue
                change = term.change(idx[sub], part, old[sub].gather(1, part),
                                     new[sub].gather(1, part), self.perms)
                self.matrices[q].index_add_(0, idx[sub], self._double(change))
        return idx[[i for group in groups for i in group]]


def _padding_groups(counts: list) -> list:
    """Split the pairs with ``counts[i] > 0`` moved rows into at most two groups, each padded
    to its largest count, with the least padded total: lists of indices into ``counts``."""
    order = sorted((i for i, c in enumerate(counts) if c > 0), key=counts.__getitem__)
    if not order:
        return []
    largest = counts[order[-1]]
    padded = [(s + 1) * counts[i] + (len(order) - s - 1) * largest for s, i in enumerate(order)]
    split = padded.index(min(padded)) + 1
    return [group for group in (order[:split], order[split:]) if group]
