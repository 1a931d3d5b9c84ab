"""Per-channel statistics of many networks at once, read (or corrected) inside one forward pass.

The traced model's graph gets a small function after each site. With the whole data in one
batch, a site that rescales its channels does so before any later layer runs, so one pass is
exactly the layer-by-layer procedure of REPAIR (Jordan et al., ICLR 2023): every site's
statistics are measured with all earlier corrections in place. The graph then returns only
the per-site statistics (or coefficients), and everything after the last site is dropped.
"""
from __future__ import annotations

import copy
import math
import operator

import torch
from torch.func import functional_call, vmap

from deepalign.evaluation._forward import eval_mode

#: A channel whose standard deviation is at most this fraction of its layer's largest is
#: dead (constant on the data): it is shifted to its target mean but never scaled.
DEAD_CHANNEL = 1e-6
#: Bytes of activations one chunk of networks may hold (activations of the whole data).
ACTIVATION_BUDGET = 2 ** 31


def _reduce_dims(x: torch.Tensor, axis: int) -> list:
    return [d for d in range(x.dim()) if d != axis % x.dim()]


def _channel_view(v: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.view(shape)


def observe(x: torch.Tensor, axis: int) -> tuple:
    """``(x, stats)``: stats (2, C) are each channel's mean and (population) std."""
    var, mean = torch.var_mean(x, dim=_reduce_dims(x, axis), correction=0)
    return x, torch.stack([mean, var.sqrt()])


def rescale(x: torch.Tensor, axis: int, target: torch.Tensor) -> tuple:
    """Set each channel's mean and std to ``target`` (2, C); return ``(y, (scale, shift))``.

    ``y = scale * x + shift`` with ``scale = target_std / std`` and
    ``shift = target_mean - scale * mean``; dead channels (see ``DEAD_CHANNEL``) keep
    ``scale = 1``, so no NaN or inf can appear.
    """
    var, mean = torch.var_mean(x, dim=_reduce_dims(x, axis), correction=0)
    std = var.sqrt()
    alive = std > DEAD_CHANNEL * std.amax()
    scale = torch.where(alive, target[1] / torch.where(alive, std, 1.0), 1.0)
    shift = target[0] - scale * mean
    y = x * _channel_view(scale, x, axis) + _channel_view(shift, x, axis)
    return y, torch.stack([scale, shift])


def batchnorm_reset(x: torch.Tensor, weight, bias, eps: float) -> tuple:
    """BatchNorm in training mode on one batch; returns ``(y, (mean, unbiased var))``.

    The statistics are what ``nn.BatchNorm`` stores as running statistics after that one batch
    with ``momentum=None``; ``y`` is normalised with the biased variance, as in training mode.
    """
    dims = _reduce_dims(x, 1)
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    count = x.numel() // x.shape[1]
    y = (x - _channel_view(mean, x, 1)) * _channel_view(torch.rsqrt(var + eps), x, 1)
    if weight is not None:
        y = y * _channel_view(weight, x, 1) + _channel_view(bias, x, 1)
    return y, torch.stack([mean, var * (count / max(count - 1, 1))])


def instrument(traced, points: list, mode: str) -> torch.fx.GraphModule:
    """A copy of the traced graph that returns one (2, C) tensor per point.

    Parameters
    ----------
    traced : TracedPermutations
    points : list of CorrectionSite (modes "observe" and "rescale") or list of
        (node name, module path) of BatchNorm layers (mode "batchnorm_reset")
    mode : str
        "observe": return each site's mean and std. "rescale": the module takes one extra
        input per site, its target (2, C), rescales the site to it on the fly and returns
        ``(scale, shift)``. "batchnorm_reset": every listed BatchNorm normalises with the
        statistics of the batch and returns them.
    """
    gm = traced.graph_module
    graph = copy.deepcopy(gm.graph)
    nodes = {n.name: n for n in graph.nodes}
    last_input = [n for n in graph.nodes if n.op == "placeholder"][-1]
    results = []
    for k, point in enumerate(points):
        if mode == "batchnorm_reset":
            node, module = nodes[point[0]], gm.get_submodule(point[1])
            with graph.inserting_before(node):
                params = [graph.get_attr(f"{point[1]}.{p}") if module.affine else None
                          for p in ("weight", "bias")]
                call = graph.call_function(batchnorm_reset,
                                           (node.args[0], *params, module.eps))
        else:
            node = nodes[point.node]
            extra = ()
            if mode == "rescale":
                with graph.inserting_after(last_input):
                    last_input = graph.placeholder(f"target_{k}")
                extra = (last_input,)
            with graph.inserting_after(node):
                call = graph.call_function(observe if mode == "observe" else rescale,
                                           (node, point.axis, *extra))
        with graph.inserting_after(call):
            value = graph.call_function(operator.getitem, (call, 0))
        with graph.inserting_after(value):
            results.append(graph.call_function(operator.getitem, (call, 1)))
        node.replace_all_uses_with(value, delete_user_cb=lambda user: user is not call)
        if mode == "batchnorm_reset":
            graph.erase_node(node)
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (tuple(results),)
    module = torch.fx.GraphModule(gm, graph)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


def chunk_size(traced, n_samples: int) -> int:
    """Networks per vectorised pass so that their activations on the data fit the budget."""
    largest = max((math.prod(n.meta["tensor_meta"].shape) for n in traced.graph_module.graph.nodes
                   if hasattr(n.meta.get("tensor_meta"), "shape")), default=1)
    # float32 activations; a site holds its input, output and temporaries at once
    per_network = 4 * largest * max(n_samples, 1) * 8
    return max(1, ACTIVATION_BUDGET // per_network)


def run_instrumented(model: torch.nn.Module, module: torch.fx.GraphModule, stacked: dict,
                     x: torch.Tensor, targets: list | None = None,
                     chunk: int | None = None) -> list:
    """Run ``module`` for every network of ``stacked`` (M, ...) on all of ``x`` at once.

    Returns one tensor per point, shape (M, 2, C). ``model`` is the user's module, put in eval
    mode for the call (the instrumented graph shares its layers).
    """
    keys = set(module.state_dict())
    params = {k: v for k, v in stacked.items() if k in keys}
    count = next(iter(stacked.values())).shape[0]
    targets = targets or []
    step = chunk or count

    def one(p, t):
        return functional_call(module, p, (x, *t))

    outs = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, count, step):
            part = {k: v[start:start + step] for k, v in params.items()}
            outs.append(vmap(one)(part, [t[start:start + step] for t in targets]))
    return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]
