"""Align-then-average merging of two models, and MergeMany for N > 2 (Ainsworth et al.)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from deepalign.baselines._weight_matching import weight_matching
from deepalign.weightspace._pairs import as_batch, ranks_of
from deepalign.weightspace._perm_sets import identity_permutations
from deepalign.weightspace._permute import permute
from deepalign.weightspace._spec import PermutationSpec


class MergeResult(NamedTuple):
    """``state_dict``: the merged model; ``perms``: int64 ``(N, n)`` per perm name, mapping
    each input model onto the merged basis (model 0 keeps the identity when N = 2)."""
    state_dict: dict
    perms: dict


def _mean(stacked: Mapping) -> dict:
    """Average over the leading dimension; integer buffers are taken from the first model."""
    return {k: v.mean(0) if v.is_floating_point() else v[0].clone() for k, v in stacked.items()}


def merge(state_dicts, spec: PermutationSpec, max_iter: int = 100, seed: int = 0,
          progress: bool = False, correction: str | None = None, model=None,
          data=None) -> MergeResult:
    """Merge N models of one architecture by aligning them and averaging their weights.

    - N = 2: weight-match model 1 to model 0 (``weight_matching``) and average.
    - N > 2: MergeMany (Ainsworth et al., ICLR 2023, §4): in a random order each round,
      weight-match every model to the mean of the others (warm-started from its current
      perms); stop after a round in which no perm changed, or after ``max_iter`` rounds.
      The result is the mean of the aligned models.

    Structured specs (heads, grouped convolutions) work as in ``weight_matching``; the perms
    respect every block group.

    Parameters
    ----------
    state_dicts : sequence of dicts, or one dict of stacked tensors (N, ...)
        Not modified.
    spec : PermutationSpec
    max_iter : int
        Maximum rounds of MergeMany (and sweeps of each weight matching).
    seed : int
        Drives the round orders and weight matching's orders.
    correction : {None, "reset_bn", "repair"}
        Correct the average on ``data``: re-estimate its BatchNorm statistics
        (``deepalign.reset_bn``), or give every hidden channel the mean and standard deviation
        averaged over the aligned models (REPAIR; for N = 2 exactly ``deepalign.repair`` at
        ``lam = 0.5``).
    model : nn.Module
        The architecture; needed with a correction.
    data : Tensor x, pair (x, y) or iterable of batches
        The samples the correction measures statistics on; needed with a correction.

    Returns
    -------
    MergeResult
    """
    if isinstance(state_dicts, Mapping):
        stacked, count = as_batch(state_dicts, ranks_of(spec), "state_dicts")
        if count is None:
            raise ValueError("state_dicts must stack N >= 2 models along a leading dimension")
    elif isinstance(state_dicts, Sequence):
        if len(state_dicts) < 2:
            raise ValueError(f"merge needs at least 2 models, got {len(state_dicts)}")
        singles = [as_batch(sd, ranks_of(spec), f"state_dicts[{i}]")
                   for i, sd in enumerate(state_dicts)]
        if any(count is not None for _, count in singles):
            raise ValueError("state_dicts must be single state_dicts (or one stacked dict)")
        stacked = {k: torch.cat([sd[k] for sd, _ in singles]) for k in singles[0][0]}
        count = len(state_dicts)
    else:
        raise TypeError("state_dicts must be a sequence of state_dicts or one stacked dict")
    if count < 2:
        raise ValueError(f"merge needs at least 2 models, got {count}")
    sizes = spec.check(stacked, batched=True)
    device = next(iter(stacked.values())).device
    perms = identity_permutations(sizes, count, device)
    if count == 2:
        pair = weight_matching({k: v[0] for k, v in stacked.items()},
                               {k: v[1] for k, v in stacked.items()}, spec, max_iter, seed)
        for name in perms:
            perms[name][1] = pair[name]
    else:
        aligned = permute(stacked, spec, perms)
        rng = np.random.default_rng(seed)
        for round_ in tqdm(range(max_iter), desc="merge many", disable=not progress):
            changed = False
            for i in rng.permutation(count).tolist():
                others = _mean({k: torch.cat([v[:i], v[i + 1:]]) for k, v in aligned.items()})
                current = {k: p[i] for k, p in perms.items()}
                new = weight_matching(others, {k: v[i] for k, v in stacked.items()}, spec,
                                      max_iter, seed + round_ * count + i, init=current)
                if any(not torch.equal(new[k], current[k]) for k in new):
                    changed = True
                    for k in new:
                        perms[k][i] = new[k]
                    one = permute({k: v[i] for k, v in stacked.items()}, spec, new)
                    for k in aligned:
                        aligned[k][i] = one[k]
            if not changed:
                break
    aligned = permute(stacked, spec, perms)
    merged = _mean(aligned)
    if correction is not None:
        merged = _corrected(merged, aligned, count, correction, model, data)
    return MergeResult(merged, perms)


def _corrected(merged: dict, aligned: dict, count: int, correction: str, model, data) -> dict:
    """The mean of ``count`` aligned models corrected toward their average statistics."""
    from deepalign.correction import Correction

    if model is None or data is None:
        raise ValueError(f"correction={correction!r} needs the architecture (model=) and the "
                         "data to measure statistics on (data=)")
    endpoints = [{k: v[i:i + 1] for k, v in aligned.items()} for i in range(count)]
    fix = Correction(correction, model, data, endpoints)
    weights = torch.full((1, count), 1 / count, dtype=torch.float64)
    out = fix({k: v[None] for k, v in merged.items()}, torch.zeros(1, dtype=torch.long), weights)
    return {k: v[0] for k, v in out.items()}
