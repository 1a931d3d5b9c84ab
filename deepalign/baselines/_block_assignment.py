r"""Exact assignment over a block group: one permutation of blocks, permutations inside them.

A block group (``deepalign.weightspace.BlockGroup``: attention heads, convolution groups)
restricts each member perm ``p`` (size ``H * m``) to ``p[h*m + j] = s[h]*m + t_h[j]`` with one
block permutation ``s`` shared by all members. Given a linear objective per member,
:math:`\sum_k \langle C_k, P_k \rangle` with ``C_k`` of shape (n_k, n_k), the best group
element is found in two levels (Ainsworth et al.'s tracker calls it O(n^2 k^3 + n^3)):

.. math:: G_{h h'} = \sum_k \max_{t} \sum_j C_k[h m_k + j, \; h' m_k + t(j)], \qquad
          s = \arg\max_s \sum_h G_{h, s(h)},

then ``t_h`` is the inner optimum of block pair ``(h, s(h))``. This is exact: once ``s`` is
fixed, the inner problems of different blocks and members are independent, and each block
pair's best inner assignment does not depend on the others.

Every function works on a batch of ``P`` problems (pairs); all inner problems of one size go
into one batched ``linear_assignment`` call.
"""
from __future__ import annotations

import torch

from deepalign.ops import linear_assignment
from deepalign.weightspace._structure import block_structure, compose_blocks


def assignment_value(cost: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    r"""``sum_i cost[b, i, perm[b, i]]`` per problem: cost (P, n, n), perm (P, n) -> (P,)."""
    return cost.gather(2, perm[:, :, None]).sum((1, 2))


def _solve_batched(problems: list) -> list:
    """Maximise every (..., m, m) tensor of ``problems``; one call per distinct ``m``.

    Returns ``[(cols (..., m), values (...)), ...]`` in the order of ``problems``.
    """
    out = [None] * len(problems)
    by_size = {}
    for k, sub in enumerate(problems):
        by_size.setdefault(sub.shape[-1], []).append(k)
    for m, ks in by_size.items():
        flat = torch.cat([problems[k].reshape(-1, m, m) for k in ks])
        cols = linear_assignment(flat, maximize=True)
        values = flat.gather(2, cols[:, :, None]).squeeze(2).sum(1)
        start = 0
        for k in ks:
            lead = problems[k].shape[:-2]
            count = lead.numel()
            out[k] = (cols[start:start + count].reshape(*lead, m),
                      values[start:start + count].reshape(lead))
            start += count
    return out


def _sub_blocks(cost: torch.Tensor, blocks: int) -> torch.Tensor:
    """(P, H*m, H*m) -> (P, H, H, m, m): entry ``[b, h, h']`` is block pair (h of A, h' of B)."""
    m = cost.shape[-1] // blocks
    return cost.reshape(cost.shape[0], blocks, m, blocks, m).transpose(2, 3)


def block_assignment(costs: list, blocks: int) -> tuple:
    r"""The best element of a block group for linear member objectives (module docstring).

    Parameters
    ----------
    costs : list of Tensor, each (P, n_k, n_k)
        One similarity matrix per member (``n_k = blocks * m_k``); maximised.
    blocks : int
        ``H``, the number of blocks.

    Returns
    -------
    perms : list of Tensor, each (P, n_k) int64
        Block-structured, sharing one block permutation.
    s : Tensor, shape (P, H) int64
        The block permutation: block ``h`` of A is matched to block ``s[h]`` of B.
    gains : Tensor, shape (P, H, H) float
        :math:`G_{h h'}`, the summed inner optima.
    """
    solved = _solve_batched([_sub_blocks(c, blocks) for c in costs])
    gains = sum(values for _, values in solved)
    s = linear_assignment(gains, maximize=True)
    perms = []
    for cols, _ in solved:  # cols: (P, H, H, m)
        m = cols.shape[-1]
        inner = cols.gather(2, s[:, :, None, None].expand(-1, -1, 1, m)).squeeze(2)
        perms.append(compose_blocks(s, inner))
    return perms, s, gains


def inner_assignment(cost: torch.Tensor, s: torch.Tensor, blocks: int) -> torch.Tensor:
    r"""The best member perm with the block permutation ``s`` fixed.

    Block ``h`` gets :math:`t_h = \arg\max_t \sum_j C[h m + j, \; s(h) m + t(j)]`; exact for a
    linear objective since the blocks are independent once ``s`` is fixed.

    Parameters
    ----------
    cost : Tensor, shape (P, H*m, H*m)
    s : Tensor, shape (P, H) int64
    blocks : int

    Returns
    -------
    Tensor, shape (P, H*m) int64
    """
    sub = _sub_blocks(cost, blocks)
    m = sub.shape[-1]
    index = s[:, :, None, None, None].expand(-1, -1, 1, m, m)
    diagonal = sub.gather(2, index).squeeze(2)  # (P, H, m, m): block pairs (h, s[h])
    (cols, _), = _solve_batched([diagonal])
    return compose_blocks(s, cols)


def block_permutation(perm: torch.Tensor, blocks: int) -> torch.Tensor:
    """The block permutation ``s`` (P, H) of block-structured perms (P, H*m)."""
    parts = block_structure(perm, blocks)
    if parts is None:
        raise ValueError(f"perm is not block-structured with {blocks} blocks")
    return parts[0]


def assign_perms(scores, spec, keep_group_order: bool = False) -> dict:
    """Hard perms maximising ``sum_p <scores[p], P_p>`` over the spec's group.

    Perms outside block groups get their own linear assignment; each block group gets
    ``block_assignment`` on its members' scores, so the result respects the block structure.
    Used to round soft plans and similarity matrices that were computed per perm.

    Parameters
    ----------
    scores : dict of str to Tensor, each (P, n, n)
    spec : PermutationSpec
    keep_group_order : bool
        Convolution groups (block groups of kind ``"groups"``) keep their block order and get
        inner assignments only: for scores that say nothing across groups (Sinkhorn
        re-basin's block-diagonal logits).

    Returns
    -------
    dict of str to Tensor, each (P, n) int64, in ``spec.perm_names`` order
    """
    out = {}
    for group in spec.block_groups:
        if keep_group_order and group.kind == "groups":
            first = scores[group.perms[0]]
            s = torch.arange(group.blocks, device=first.device).expand(first.shape[0], -1)
            perms = [inner_assignment(scores[p], s, group.blocks) for p in group.perms]
        else:
            perms, _, _ = block_assignment([scores[p] for p in group.perms], group.blocks)
        out.update(zip(group.perms, perms))
    return {name: out[name] if name in out else linear_assignment(scores[name], maximize=True)
            for name in spec.perm_names}
