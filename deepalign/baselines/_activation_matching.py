"""Activation matching (Ainsworth et al. / Tatro et al.), batched over many pairs."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx
from tqdm.auto import tqdm

from deepalign.evaluation._data import iter_batches
from deepalign.evaluation._forward import forward_eval
from deepalign.baselines._block_assignment import assign_perms
from deepalign.weightspace._fx_spec import trace_permutations
from deepalign.weightspace._pairs import broadcast_pair, ranks_of
from deepalign.weightspace._spec import PermutationSpec

_EPS = 1e-12


def _probe(traced) -> tuple:
    """A graph module returning every activation site; and ``[(perm, axis), ...]`` per output."""
    gm = traced.graph_module
    nodes = {node.name: node for node in gm.graph.nodes}
    graph, env = torch.fx.Graph(), {}
    for node in gm.graph.nodes:
        if node.op != "output":
            env[node] = graph.node_copy(node, lambda n: env[n])
    outputs = [(perm, env[nodes[name]], axis)
               for perm, sites in traced.sites.items() for name, axis in sites]
    graph.output(tuple(node for _, node, _ in outputs))
    probe = torch.fx.GraphModule(gm, graph)
    probe.graph.eliminate_dead_code()  # the layers after the last site are not needed
    probe.recompile()
    return probe, [(perm, axis) for perm, _, axis in outputs]


def _rename(traced_spec: PermutationSpec, spec: PermutationSpec) -> dict:
    """Map the traced perm names onto ``spec``'s names; the two must describe the same ties."""
    mapping = {}
    for perm, entries in traced_spec.perm_to_axes.items():
        key, axis = entries[0]
        mapping[perm] = spec.axes_to_perm.get(key, (None,) * (axis + 1))[axis]
    for key, axes in traced_spec.axes_to_perm.items():
        renamed = tuple(None if p is None else mapping[p] for p in axes)
        if spec.axes_to_perm.get(key) != renamed:
            raise ValueError(f"spec does not match the symmetry traced from the model at {key!r}: "
                             f"{spec.axes_to_perm.get(key)} vs traced {renamed}")
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"spec does not match the symmetry traced from the model: it ties "
                         f"permutations the model keeps separate ({mapping})")
    return mapping


def activation_matching(model: torch.nn.Module, sd_a: Mapping, sd_b: Mapping,
                        spec: PermutationSpec, data, metric: str = "correlation",
                        batch_size: int | None = 1024, progress: bool = False) -> dict:
    r"""Align B to A by matching activations, for one pair or a batch of pairs at once.

    Both networks run over ``data`` (eval mode); for every permutation the activations
    where it acts (the inputs of the layers that read it, e.g. post-ReLU features, traced with
    ``torch.fx``) are compared unit by unit over all samples (and spatial positions), and the
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
        The architecture (traceable by ``torch.fx``); not modified.
    sd_a, sd_b : dict of str to Tensor
        Single state_dicts or batches (B). Not modified.
    spec : PermutationSpec
        Must describe the same ties as the spec traced from ``model`` (names may differ).
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
    if spec.structured_axes:
        raise NotImplementedError(
            "activation_matching supports block groups but not concatenated or grouped axes "
            f"({', '.join(f'{k}[{a}]' for k, a in list(spec.structured_axes)[:4])}): its "
            "activation sites come from the torch.fx tracer, which derives plain specs only")
    spec.check(model)
    a, b, batch = broadcast_pair(sd_a, sd_b, ranks_of(spec))
    stats = None
    for x, _ in tqdm(iter_batches(data, batch_size), desc="activation matching",
                     disable=not progress):
        if stats is None:
            traced = trace_permutations(model, x[:1])
            mapping = _rename(traced.spec, spec)
            probe, outputs = _probe(traced)
            keys = list(probe.state_dict())  # layers after the last site are gone
            stats = {}
        with torch.no_grad():
            acts_a = forward_eval(probe, {k: a[k] for k in keys}, x)
            acts_b = forward_eval(probe, {k: b[k] for k in keys}, x)
        for (perm, axis), fa, fb in zip(outputs, acts_a, acts_b):
            fa = fa.movedim(axis + 1, -1).reshape(fa.shape[0], -1, fa.shape[axis + 1]).double()
            fb = fb.movedim(axis + 1, -1).reshape(fb.shape[0], -1, fb.shape[axis + 1]).double()
            s = stats.setdefault(mapping[perm], [0, 0.0, 0.0, 0.0, 0.0, 0.0])
            s[0] += fa.shape[1]
            s[1] = s[1] + fa.sum(1)
            s[2] = s[2] + fb.sum(1)
            s[3] = s[3] + (fa * fa).sum(1)
            s[4] = s[4] + (fb * fb).sum(1)
            s[5] = s[5] + fa.mT @ fb
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
