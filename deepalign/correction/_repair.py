"""REPAIR and BatchNorm reset: merged networks whose channel statistics are what they should be.

Interpolating two aligned networks shrinks the variance of their hidden channels (neurons of
A and B are only partly correlated), and the shrinkage compounds with depth: merged deep
networks collapse. REPAIR (Jordan et al., ICLR 2023) measures each hidden channel's mean and
standard deviation in the two endpoints on data and gives the merged network's channel the
interpolated values; resetting BatchNorm statistics on data is its cheap form for BatchNorm
networks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from deepalign.correction._fold import check_foldable, fold_rescale, fold_running_stats
from deepalign.correction._instrument import chunk_size, run_instrumented
from deepalign.correction._sites import plan_corrections
from deepalign.evaluation._interpolate import interpolate
from deepalign.weightspace._pairs import as_batch, broadcast_pair, ranks_of

#: Names accepted wherever a correction is chosen (``None`` for none).
CORRECTIONS = ("reset_bn", "repair")


def correction_inputs(data) -> torch.Tensor:
    """The inputs of ``data`` as one tensor (N, ...): statistics are taken over all of it.

    ``data`` is a Tensor x, a pair (x, y), or an iterable of such batches (concatenated).
    """
    if isinstance(data, torch.Tensor):
        x = data
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor) \
            and isinstance(data[1], torch.Tensor):
        x = data[0]
    elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes, Mapping)):
        parts = [correction_inputs(batch) for batch in data]
        if not parts:
            raise ValueError("data is empty: the correction needs samples to measure on")
        x = torch.cat(parts)
    else:
        raise TypeError("data must be a Tensor x, a pair (x, y), or an iterable of batches; "
                        f"got {type(data).__name__}")
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(f"data is empty (inputs of shape {tuple(x.shape)}): the correction "
                         "needs samples to measure on")
    if len(x) < 2:
        raise ValueError("data has 1 sample: channel statistics need at least 2")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("data contains NaN or inf")
    return x


class Correction:
    """A correction prepared for K endpoint networks (per pair) on some data.

    ``correction(stacked, pair, weights)`` corrects M networks; network ``m`` is the merge of
    pair ``pair[m]``'s endpoints with ``weights[m]`` (K,), e.g. ``(1 - lam, lam)`` on the
    line from A to B.

    - ``"repair"``: each site's channels get mean ``sum_k w_k mean_k`` and standard deviation
      ``sum_k w_k std_k`` of the endpoints, measured on the data in eval mode.
    - ``"reset_bn"``: every BatchNorm's running statistics are re-estimated on the data.

    Parameters
    ----------
    kind : str
        "repair" or "reset_bn".
    model : nn.Module
        The architecture (run with hooks; its own weights are not used).
    data : Tensor, pair (x, y) or iterable of batches
        Inputs the statistics are measured on, all at once.
    endpoints : sequence of dict of str to Tensor, each (P, ...)
        The K stacked endpoint state dicts (REPAIR only; B already aligned to A).
    """

    def __init__(self, kind: str, model: torch.nn.Module, data, endpoints: Sequence = ()):
        if kind not in CORRECTIONS:
            raise ValueError(f"correction must be None or one of {CORRECTIONS}, got {kind!r}")
        self.kind, self.model = kind, model
        self.x = correction_inputs(data)
        try:
            plan = plan_corrections(model, self.x)
        except ValueError as exc:
            raise ValueError(f"data: {exc}") from exc
        self.chunk = chunk_size(plan.activation_size, len(self.x))
        if kind == "reset_bn":
            self.points, self.mode = plan.batchnorms, "batchnorm_reset"
            if not self.points:
                raise ValueError(f"{type(model).__name__} has no BatchNorm layer with running "
                                 "statistics: reset_bn has nothing to re-estimate")
            return
        self.points, self.mode = plan.sites, "rescale"
        if not self.points:
            raise ValueError(f"{type(model).__name__} has no correctable layer: REPAIR needs "
                             "hidden Linear, convolution or normalisation layers whose output "
                             "channels are permuted")
        check_foldable(model, self.points)
        self.stats = [self._run("observe", sd) for sd in endpoints]

    def _run(self, mode: str, stacked: Mapping, targets=None) -> list:
        return run_instrumented(self.model, self.points, mode, dict(stacked), self.x, targets,
                                self.chunk)

    def __call__(self, stacked: Mapping, pair: torch.Tensor | None = None,
                 weights: torch.Tensor | None = None) -> dict:
        """Corrected copy of the stacked state dict ``stacked`` (M, ...)."""
        if self.kind == "reset_bn":
            return fold_running_stats(dict(stacked), self.points,
                                      self._run(self.mode, stacked))
        w = weights.to(torch.float64)
        targets = [sum(w[:, k, None, None] * s[k][pair].double()
                       for k in range(len(self.stats))).to(s[0].dtype) for s in zip(*self.stats)]
        coefficients = self._run(self.mode, stacked, targets)
        return fold_rescale(dict(stacked), self.points, coefficients)


def _check_lam(lam) -> float:
    if isinstance(lam, torch.Tensor):
        lam = lam.item() if lam.numel() == 1 else lam
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or not 0 <= lam <= 1:
        raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
    return float(lam)


def _unbatch(stacked: dict, batch) -> dict:
    return stacked if batch is not None else {k: v[0] for k, v in stacked.items()}


def repair(model: torch.nn.Module, sd_a: Mapping, sd_b: Mapping, lam: float, data) -> dict:
    r"""The merged network :math:`(1 - \lambda) A + \lambda B` with REPAIR applied.

    Jordan et al. (ICLR 2023), exact variant: at every hidden site (a permuted output of a
    ``Linear``, convolution or normalisation layer; see ``plan_corrections``), in execution
    order, the merged network's per-channel mean :math:`\mu_M` and standard deviation
    :math:`\sigma_M` on ``data`` are measured with all earlier corrections in place, and the
    channel becomes :math:`(y - \mu_M)\,\sigma^*/\sigma_M + \mu^*`, with
    :math:`\mu^* = (1-\lambda)\mu_A + \lambda\mu_B` and
    :math:`\sigma^* = (1-\lambda)\sigma_A + \lambda\sigma_B` measured in the endpoints (eval
    mode). The affine map is folded into the layer that computes the channel (a BatchNorm's or
    LayerNorm's weight and bias, or a ``Linear``/convolution's weight rows and bias), so the
    result is a plain state dict of the same architecture. Channels that are constant on the
    data in the merged network are only shifted to their target mean.

    Parameters
    ----------
    model : nn.Module
        The architecture; not modified.
    sd_a, sd_b : dict of str to Tensor
        One pair, or stacked pairs (P, ...); B already aligned to A.
    lam : float in [0, 1]
    data : Tensor x (N, ...), pair (x, y), or iterable of such batches
        Samples the statistics are measured on, all in one pass (N >= 2).

    Returns
    -------
    dict of str to Tensor
        The repaired merged state dict (stacked when the input was).
    """
    lam = _check_lam(lam)
    a, b, batch = broadcast_pair(sd_a, sd_b, ranks_of(model))
    correction = Correction("repair", model, data, (a, b))
    count = next(iter(a.values())).shape[0]
    weights = torch.tensor([[1 - lam, lam]], dtype=torch.float64).expand(count, 2)
    out = correction(interpolate(a, b, lam), torch.arange(count), weights)
    return _unbatch(out, batch)


def correct_merge(model: torch.nn.Module, sd_a: Mapping, sd_b: Mapping, correction: str,
                  data, lam: float = 0.5) -> dict:
    """The merge of A and aligned B at ``lam`` with ``correction`` ("repair" or "reset_bn")."""
    if correction == "repair":
        return repair(model, sd_a, sd_b, lam, data)
    if correction == "reset_bn":
        return reset_bn(model, interpolate(sd_a, sd_b, _check_lam(lam)), data)
    raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


def reset_bn(model: torch.nn.Module, state_dict: Mapping, data) -> dict:
    """``state_dict`` with every BatchNorm's running statistics re-estimated on ``data``.

    The same as putting the model in training mode with ``momentum=None`` and running all of
    ``data`` through it as one batch: each BatchNorm stores the mean and unbiased variance of
    its input, normalising (as in training) with the batch's statistics on the way.

    Parameters
    ----------
    model : nn.Module
        The architecture; not modified.
    state_dict : dict of str to Tensor
        One state dict or a stacked batch (B, ...).
    data : Tensor x (N, ...), pair (x, y), or iterable of such batches

    Returns
    -------
    dict of str to Tensor
    """
    stacked, batch = as_batch(state_dict, ranks_of(model), "state_dict")
    return _unbatch(Correction("reset_bn", model, data)(stacked), batch)
