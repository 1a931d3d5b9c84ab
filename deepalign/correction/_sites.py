"""Where a merged network's statistics are corrected: one site per permuted hidden layer output."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepalign.weightspace._fx_spec import TracedPermutations, trace_permutations

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm)


@dataclass(frozen=True)
class CorrectionSite:
    """A hidden layer output whose channels get ``y <- scale * y + shift`` (REPAIR).

    Attributes
    ----------
    node : str
        The fx node whose output is corrected.
    module : str
        Module path of the layer that computes it; its weight and bias absorb the correction.
    axis : int
        Channel axis of the activation (1 for convolutions, the last for ``Linear``).
    perm : str
        The permutation acting on those channels.
    """
    node: str
    module: str
    axis: int
    perm: str


def _is_norm(gm: torch.fx.GraphModule, node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), _NORMS)


def correction_sites(traced: TracedPermutations) -> list:
    """The REPAIR sites of a traced model, in execution order.

    Every ``Linear``, convolution or normalisation layer whose output channels carry a
    permutation (hidden channels: not inputs or outputs) is a site, except a layer whose output
    only feeds normalisation layers: those normalise it again, so the site is their output
    (``conv -> BatchNorm -> ReLU`` is corrected after the BatchNorm, ``Linear -> LayerNorm``
    after the LayerNorm). Residual branches are corrected each on its own, before the addition,
    as Jordan et al. (ICLR 2023) do for ResNets. The sites follow the ``PermutationSpec``:
    no per-architecture code.
    """
    gm = traced.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    sites = []
    for node_name, module, perm, axis in traced.layers:
        node = nodes[node_name]
        if perm is None or all(_is_norm(gm, user) for user in node.users):
            continue
        sites.append(CorrectionSite(node_name, module, axis, perm))
    return sites


def batchnorm_layers(traced: TracedPermutations) -> list:
    """``(node name, module path)`` of every BatchNorm that tracks running statistics."""
    gm = traced.graph_module
    return [(node, module) for node, module, _, _ in traced.layers
            if isinstance(gm.get_submodule(module), nn.modules.batchnorm._BatchNorm)
            and gm.get_submodule(module).track_running_stats]


def trace_for_correction(model: nn.Module, x: torch.Tensor) -> TracedPermutations:
    """``trace_permutations`` on one sample of ``x``, with errors that name ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return trace_permutations(model, x[:1])
