"""Folding per-channel corrections into the weights, so that the result is a plain state dict."""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn


def check_foldable(model: nn.Module, sites: list) -> None:
    """Every site's layer must own a weight and a bias that can absorb ``scale`` and ``shift``.

    Raises ``ValueError`` naming the layer otherwise (a convolution without bias feeding a
    ReLU directly, a normalisation without affine parameters, a layer called twice).
    """
    twice = [m for m, n in Counter(s.module for s in sites).items() if n > 1]
    if twice:
        raise ValueError(f"layers {twice} are called more than once: a per-call correction "
                         "cannot be folded into their shared weights")
    for site in sites:
        module = model.get_submodule(site.module)
        if getattr(module, "weight", None) is None or getattr(module, "bias", None) is None:
            raise ValueError(
                f"layer {site.module!r} ({type(module).__name__}) has no "
                f"{'weight' if getattr(module, 'weight', None) is None else 'bias'} to absorb "
                "the correction of its output channels; give it affine parameters or a bias, "
                "or follow it by a normalisation layer that has them")


def fold_rescale(stacked: dict, sites: list, coefficients: list) -> dict:
    """Apply ``y <- scale * y + shift`` of each site to the layer that computes ``y``.

    Parameters
    ----------
    stacked : dict of str to Tensor, each (M, ...)
    sites : list of CorrectionSite
    coefficients : list of Tensor, each (M, 2, C)
        ``(scale, shift)`` per site and network.

    Returns
    -------
    dict of str to Tensor
        A new stacked state dict: the site layers' weight rows are scaled and their biases
        become ``scale * bias + shift``; every other entry is shared with ``stacked``.
    """
    out = dict(stacked)
    for site, coeff in zip(sites, coefficients):
        scale, shift = coeff[:, 0], coeff[:, 1]
        weight, bias = f"{site.module}.weight", f"{site.module}.bias"
        w = stacked[weight]
        out[weight] = w * scale.to(w.dtype).reshape(*scale.shape, *[1] * (w.dim() - 2))
        out[bias] = torch.addcmul(shift.to(w.dtype), stacked[bias], scale.to(w.dtype))
    return out


def fold_running_stats(stacked: dict, layers: list, stats: list) -> dict:
    """Write re-estimated ``(mean, var)`` (M, 2, C) into each BatchNorm's running statistics.

    ``layers`` are the BatchNorms' module paths, one per call (a later call's statistics win).

    ``num_batches_tracked`` becomes 1, as after one training-mode batch from reset statistics.
    """
    out = dict(stacked)
    for module, s in zip(layers, stats):
        tracked = f"{module}.num_batches_tracked"
        if tracked in stacked:
            out[tracked] = torch.ones_like(stacked[tracked])
        for i, name in enumerate(("running_mean", "running_var")):
            key = f"{module}.{name}"
            out[key] = s[:, i].to(stacked[key].dtype).contiguous()
    return out
