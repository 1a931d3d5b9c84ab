"""Activation matching (Ainsworth et al. / Tatro et al.), batched over many pairs."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from deepalign.baselines._activation_sites import ActivationProbe, activation_sites, same_symmetry
from deepalign.baselines._block_assignment import assign_perms
from deepalign.evaluation._data import iter_batches
from deepalign.evaluation._forward import forward_eval
from deepalign.weightspace._pairs import broadcast_pair, ranks_of
from deepalign.weightspace._spec import PermutationSpec

_EPS = 1e-12


def activation_matching(model: torch.nn.Module, sd_a: Mapping, sd_b: Mapping,
                        spec: PermutationSpec, data, metric: str = "correlation",
                        batch_size: int | None = 1024, progress: bool = False) -> dict:
    r"""Align B to A by matching activations, for one pair or a batch of pairs at once.

    Both networks run over ``data`` (eval mode); for every permutation the activations
    where it acts (the inputs of the layers that read it, e.g. post-ReLU features, or the
    outputs of the layers that produce it where no layer reads it whole, such as attention's
    q/k dimensions; ``_activation_sites.py``) are compared unit by unit over all samples (and spatial positions), and the
    permutation is the exact linear assignment maximising the total similarity. Residual
    streams pool all their sites. Each permutation is solved independently in closed form.

    Similarity ``metric``:

    - ``"correlation"`` (default): Pearson correlation
      :math:`C_{ij} = \mathrm{cov}(a_i, b_j) / (\sigma_{a_i} \sigma_{b_j})`, as in REPAIR
      (Jordan et al., 2023) and the correlation variant of Git Re-Basin.
    - ``"inner"``: :math:`E[a_i b_j]`, the cross-moment Git Re-Basin's scripts assign on.

    Parameters
    ----------
    model : nn.Module
        The architecture (traceable by ``torch.export``); not modified.
    sd_a, sd_b : dict of str to Tensor
        Single state_dicts or batches (B). Not modified.
    spec : PermutationSpec
        Must describe the same ties as ``PermutationSpec.from_module(model)`` (names may
        differ); structured specs (heads, groups, packed projections) are rounded within
        their group.
    data : Tensor x, pair (x, y), or iterable of such batches
        Labels are ignored.
    batch_size : int, optional
        Samples per forward for in-memory data.

    Returns
    -------
    dict of str to Tensor
        Hard perms, int64 ``(n,)`` or ``(B, n)``.
    """
    if metric not in ("correlation", "inner"):
        raise ValueError(f"metric must be 'correlation' or 'inner', got {metric!r}")
    a, b, batch = broadcast_pair(sd_a, sd_b, ranks_of(spec))
    probe = ActivationProbe(model, activation_sites(model, spec))
    a = {f"model.{k}": v for k, v in a.items()}
    b = {f"model.{k}": v for k, v in b.items()}
    stats = None
    for x, _ in tqdm(iter_batches(data, batch_size), desc="activation matching",
                     disable=not progress):
        if stats is None:
            same_symmetry(PermutationSpec.from_module(model, x[:1]), spec)
            stats = {}
        with torch.no_grad():
            acts_a = forward_eval(probe, a, x)
            acts_b = forward_eval(probe, b, x)
        for site, fa, fb in zip(probe.calls, acts_a, acts_b):
            axis = site.axis if site.axis < 0 else site.axis + 1  # past the pair dimension
            sizes = [n for _, n in site.segments]
            for (perm, n), pa, pb in zip(site.segments, fa.split(sizes, axis),
                                         fb.split(sizes, axis)):
                pa = pa.movedim(axis, -1).reshape(pa.shape[0], -1, n).double()
                pb = pb.movedim(axis, -1).reshape(pb.shape[0], -1, n).double()
                s = stats.setdefault(perm, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
                s[0] += pa.shape[1]
                s[1] = s[1] + pa.sum(1)
                s[2] = s[2] + pb.sum(1)
                s[3] = s[3] + (pa * pa).sum(1)
                s[4] = s[4] + (pb * pb).sum(1)
                s[5] = s[5] + pa.mT @ pb
    if stats is None:
        raise ValueError("data is empty")
    similarities = {}
    for name in spec.perm_names:
        if name not in stats:
            raise ValueError(f"no activations carry perm {name!r}; activation matching needs "
                             "every permutation to feed a Linear or Conv layer")
        count, sa, sb, qa, qb, cross = stats[name]
        if metric == "inner":
            sim = cross / count
        else:
            ma, mb = sa / count, sb / count
            cov = cross / count - ma[:, :, None] * mb[:, None, :]
            std_a = (qa / count - ma**2).clamp(min=0).sqrt()
            std_b = (qb / count - mb**2).clamp(min=0).sqrt()
            sim = cov / (std_a[:, :, None] * std_b[:, None, :] + _EPS)
        similarities[name] = sim
    perms = assign_perms(similarities, spec)
    return perms if batch is not None else {k: p[0] for k, p in perms.items()}
