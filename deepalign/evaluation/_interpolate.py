"""Linear interpolation between (batches of) state_dicts."""
from __future__ import annotations

from collections.abc import Mapping

import torch


def interpolate(sd_a: Mapping, sd_b: Mapping, lam) -> dict:
    r"""Points on the straight line between two weight sets: :math:`(1 - \lambda) A + \lambda B`.

    ``lam = 0`` gives A and ``lam = 1`` gives B. Integer tensors (BatchNorm's
    ``num_batches_tracked``) cannot be interpolated and are taken from A.

    Parameters
    ----------
    sd_a, sd_b : dict of str to Tensor
        Same keys and shapes (single state_dicts or batches). Not modified.
    lam : float or Tensor of shape (L,)
        With a tensor, the result gets a new leading dimension L (one state_dict, or one batch,
        per value).

    Returns
    -------
    dict of str to Tensor
    """
    if set(sd_a) != set(sd_b):
        raise ValueError(f"sd_a and sd_b have different keys: only in sd_a "
                         f"{sorted(set(sd_a) - set(sd_b))}, only in sd_b "
                         f"{sorted(set(sd_b) - set(sd_a))}")
    grid = torch.as_tensor(lam, dtype=torch.float64)
    if grid.dim() > 1:
        raise ValueError(f"lam must be a float or a 1-D tensor, got shape {tuple(grid.shape)}")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("lam contains NaN or inf")
    out = {}
    for key, a in sd_a.items():
        b = sd_b[key]
        if a.shape != b.shape:
            raise ValueError(f"{key!r} has shape {tuple(a.shape)} in sd_a but "
                             f"{tuple(b.shape)} in sd_b")
        if not a.is_floating_point():
            out[key] = a.clone() if grid.dim() == 0 else a.expand(len(grid), *a.shape).clone()
            continue
        w = grid.to(a.dtype).to(a.device).reshape(-1, *([1] * a.dim()))
        value = torch.lerp(a.unsqueeze(0), b.unsqueeze(0), w)
        out[key] = value[0] if grid.dim() == 0 else value
    return out
