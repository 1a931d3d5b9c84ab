"""Per-channel statistics of many networks at once, read (or corrected) inside one forward pass.

A forward hook on each site's module applies a small function to the layer's output and
returns the result in its place. With the whole data in one batch, a site that rescales its
channels does so before any later layer runs, so one pass is exactly the layer-by-layer
procedure of REPAIR (Jordan et al., ICLR 2023): every site's statistics are measured with all
earlier corrections in place. Hooks run under ``torch.func`` (``vmap`` over
``functional_call``), so any module that runs eagerly works, attention included; the per-site
statistics (or coefficients) come back as outputs of the vectorised function.
"""
from __future__ import annotations


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


def _apply(mode: str, point, module, args, out, target) -> tuple:
    """``(corrected output, (2, C) result)`` of ``mode`` at one point."""
    if mode == "batchnorm_reset":
        return batchnorm_reset(args[0], module.weight, module.bias, module.eps)
    if mode == "rescale":
        return rescale(out, point.axis, target)
    return observe(out, point.axis)


def run_instrumented(model: torch.nn.Module, points: list, mode: str, stacked: dict,
                     x: torch.Tensor, targets: list | None = None,
                     chunk: int | None = None) -> list:
    """Run ``model`` with ``points`` instrumented for every network of ``stacked`` (M, ...).

    The whole of ``x`` goes through in one batch; forward hooks on the points' modules read
    (or correct) each point's output as the layer returns it, before any later layer runs,
    so one pass is exactly the layer-by-layer procedure of REPAIR. The networks run at once
    with ``vmap`` over ``functional_call``, ``chunk`` at a time.

    Parameters
    ----------
    model : nn.Module
        The architecture; put in eval mode for the call (its own weights are not used).
    points : list of CorrectionSite (modes "observe" and "rescale") or list of module paths
        of BatchNorm layers (mode "batchnorm_reset"), one per call, in execution order.
    mode : str
        "observe": each site's mean and std. "rescale": each site is rescaled on the fly to
        its target, ``targets[i]`` (M, 2, C), and returns ``(scale, shift)``.
        "batchnorm_reset": every listed BatchNorm normalises with the statistics of the batch
        and returns them (mean, unbiased var).
    stacked : dict of str to Tensor, each (M, ...)
    x : Tensor, shape (N, ...)

    Returns
    -------
    list of Tensor, each (M, 2, C)
        One per point.
    """
    keys = set(model.state_dict())
    params = {k: v for k, v in stacked.items() if k in keys}
    count = next(iter(stacked.values())).shape[0]
    targets = targets or []
    step = chunk or count
    calls: dict = {}  # module path -> indices of its points, in call order
    for i, point in enumerate(points):
        calls.setdefault(point if mode == "batchnorm_reset" else point.module, []).append(i)

    def one(p, t):
        captured = [None] * len(points)
        handles = []
        for path, indices in calls.items():
            order = iter(indices)

            def hook(module, args, out, order=order):
                i = next(order)
                y, captured[i] = _apply(mode, points[i], module, args, out,
                                        t[i] if t else None)
                return y  # replaces the layer's output: later layers read the corrected one

            handles.append(model.get_submodule(path).register_forward_hook(hook))
        try:
            functional_call(model, p, (x,))
        finally:
            for handle in handles:
                handle.remove()
        return tuple(captured)

    outs = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, count, step):
            part = {k: v[start:start + step] for k, v in params.items()}
            outs.append(vmap(one)(part, [t[start:start + step] for t in targets]))
    return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]


def chunk_size(activation_size: int, n_samples: int) -> int:
    """Networks per vectorised pass so that their activations on the data fit the budget.

    ``activation_size`` is the largest intermediate tensor's number of elements per sample.
    """
    # float32 activations; a site holds its input, output and temporaries at once
    per_network = 4 * activation_size * max(n_samples, 1) * 8
    return max(1, ACTIVATION_BUDGET // per_network)
