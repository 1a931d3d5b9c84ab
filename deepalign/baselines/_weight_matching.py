"""Weight matching (Git Re-Basin, Ainsworth et al., ICLR 2023), batched over many pairs."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from deepalign.baselines._descent import Descent, descent_units
from deepalign.baselines._similarity import SimilarityMatrices
from deepalign.weightspace._pairs import broadcast_pair, ranks_of
from deepalign.weightspace._perm_sets import identity_permutations
from deepalign.weightspace._permute import classify_perms, permute
from deepalign.weightspace._plain_view import plain_view
from deepalign.weightspace._spec import PermutationSpec


def sweep_rng(seed: int, pair_index: int) -> np.random.Generator:
    """Random source of one pair's sweep orders: sweep ``s`` visits the units of the
    ``s``-th ``sweep_rng(seed, b).permutation(n_units)`` (``descent_units(spec)``: one per
    perm for a plain spec, one per block group and per perm outside them otherwise). It does
    not depend on the batch the pair sits in, so a one-pair-at-a-time implementation can
    replay it exactly."""
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

    Structured specs (docs/CONTRACTS.md) run on ``plain_view(spec, ...)``, which has the same
    objective. A block group (attention heads, convolution groups) is one unit of a sweep,
    solved hierarchically (``deepalign.baselines._descent``): for every block pair the inner
    assignments of all members, then one assignment of the blocks on the summed inner optima.
    That is the exact optimum of the group given the other perms when its members share no
    tensor (heads); for a grouped convolution, whose in- and out-channel perms meet in one
    weight, the joint step is kept only where it improves the objective, else the perms move
    inside their blocks only. The result always respects the block structure.

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
        Starting perms (warm start), block-structured where the spec has block groups;
        identity by default.
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
    view, a = plain_view(spec, a)
    b = plain_view(spec, b)[1]
    width = next(iter(a.values())).shape[0]
    device = next(iter(a.values())).device
    if init is None:
        perms = identity_permutations(sizes, width, device)
    else:
        init_batch, hard = classify_perms(init, sizes)
        if not all(hard.values()) or init_batch not in (None, batch):
            raise ValueError("init must be hard perms (n,) or (B, n) matching the pairs")
        spec.check_structure(init)
        perms = {k: p.expand(width, -1).clone().to(device) for k, p in init.items()}
    rngs = [sweep_rng(seed, i) for i in range(width)]
    similarity = SimilarityMatrices(a, b, view, sizes, perms)
    with tqdm(total=width, desc="weight matching", unit="pair", disable=not progress) as bar:
        Descent(similarity, perms, descent_units(view), rngs, max_iter).run(bar)
    return perms if batch is not None else {k: p[0] for k, p in perms.items()}
