"""Loss barriers along the linear path between aligned networks (Deep-Align §4)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deepalign.evaluation._data import iter_batches
from deepalign.evaluation._forward import forward_eval
from deepalign.weightspace._pairs import broadcast_pair, ranks_of


@dataclass
class BarrierResult:
    """Loss along the path and its barrier/AUC, per pair.

    Attributes
    ----------
    barrier, auc : Tensor, shape () or (B,)
    lambdas : Tensor, shape (L,)
    losses : Tensor, shape (L,) or (B, L)
        Mean loss of ``(1 - lambda) A + lambda B`` over the data.
    psi : Tensor, shape (L,) or (B, L)
        ``losses`` minus the straight line between the endpoint losses.
    accuracies : Tensor, shape (L,) or (B, L), or None
        Classification accuracy along the path (targets that are class indices only).
    acc_barrier : Tensor, shape () or (B,), or None
        Largest drop of accuracy below the straight line between the endpoint accuracies,
        clipped at 0: the accuracy barrier (a fraction; 0.05 is 5 points).
    """
    barrier: torch.Tensor
    auc: torch.Tensor
    lambdas: torch.Tensor
    losses: torch.Tensor
    psi: torch.Tensor
    accuracies: torch.Tensor | None = None
    acc_barrier: torch.Tensor | None = None


def default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of logits ``out`` (N, C) against class indices ``y`` (N,)."""
    return F.cross_entropy(out, y, reduction="none")


def squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over output channels (INR fits): shape (N,)."""
    return (out - y).pow(2).reshape(out.shape[0], -1).mean(1)


def per_sample_loss(loss_fn, out: torch.Tensor, y) -> torch.Tensor:
    """``loss_fn(out, y)`` reduced to one value per sample, shape (N,)."""
    value = loss_fn(out, y)
    if value.dim() == 0 or value.shape[0] != out.shape[0]:
        raise ValueError("loss_fn must return per-sample losses (reduction='none'), got shape "
                         f"{tuple(value.shape)} for {out.shape[0]} samples")
    return value.reshape(out.shape[0], -1).mean(1)


def path_losses(model: torch.nn.Module, stacked: Mapping, data, loss_fn: Callable,
                batch_size: int | None, pair_of: torch.Tensor | None = None) -> tuple:
    """Mean per-sample loss and accuracy of each of M stacked weight sets over ``data``.

    ``pair_of`` (M,): with per-pair targets (``y`` of shape (pairs, N, ...)), network ``m``
    is scored against ``y[pair_of[m]]``; otherwise all networks share ``y``.

    Returns
    -------
    losses : Tensor, shape (M,), float64
    accuracies : Tensor, shape (M,), float64, or None
        When the outputs are logits (N, C) and the targets class indices (N,).
    """
    total, count, correct = None, 0, None
    for x, y in iter_batches(data, batch_size, targets_per_pair=pair_of is not None):
        with torch.no_grad():
            out = forward_eval(model, stacked, x)  # (M, n, ...)
        flat = out.reshape(-1, *out.shape[2:])
        if y is None:
            target = None
        elif pair_of is not None:
            target = y[pair_of].flatten(0, 1)
        else:
            target = y.repeat(out.shape[0], *([1] * (y.dim() - 1)))
        losses = per_sample_loss(loss_fn, flat, target).reshape(out.shape[0], -1).double()
        total = losses.sum(1) if total is None else total + losses.sum(1)
        count += losses.shape[1]
        if target is not None and flat.dim() == 2 and target.dim() == 1 and \
                not target.is_floating_point():
            hits = (flat.argmax(1) == target).reshape(out.shape[0], -1).sum(1).double()
            correct = hits if correct is None else correct + hits
    if total is None or count == 0:
        raise ValueError("data is empty")
    return total / count, None if correct is None else correct / count


def barrier_from_losses(losses: torch.Tensor, lambdas: torch.Tensor, ends=None) -> tuple:
    r"""Barrier and AUC from losses on a lambda grid that starts at 0 and ends at 1.

    :math:`\psi(\lambda) = L(\lambda) - ((1 - \lambda) L(0) + \lambda L(1))`;
    barrier :math:`= \max(0, \max_\lambda \psi)`, AUC :math:`= \max(0, \int_0^1 \psi)`
    (trapezoid rule), as in Navon et al. (ICML 2024, §6). Returns ``(barrier, auc, psi)``.
    ``ends = (L_A, L_B)``, each shape (...,), replaces the path's own endpoint losses in the
    line: for a path whose end is not B itself (perms that are not a symmetry).
    """
    first, last = (losses[..., :1], losses[..., -1:]) if ends is None else (
        ends[0][..., None], ends[1][..., None])
    line = (1 - lambdas) * first + lambdas * last
    psi = losses - line
    barrier = psi.amax(-1).clamp(min=0)
    auc = torch.trapezoid(psi, lambdas, dim=-1).clamp(min=0)
    return barrier, auc, psi


def loss_barrier(model: torch.nn.Module, sd_a: Mapping, sd_b: Mapping, data,
                 n_points: int = 25, loss_fn: Callable | None = None,
                 batch_size: int | None = 1024, chunk_size: int | None = 512,
                 progress: bool = False, targets_per_pair: bool = False,
                 correction: str | None = None, correction_data=None) -> BarrierResult:
    """Loss (and accuracy) barrier and AUC between A and (aligned) B, for one or many pairs.

    All ``B * n_points`` interpolated networks run through one vmapped functional forward
    (``chunk_size`` at a time), in eval mode: without a correction, BatchNorm uses the
    interpolated running statistics.

    Parameters
    ----------
    model : nn.Module
        The architecture; not modified.
    sd_a, sd_b : dict of str to Tensor
        Single state_dicts or batches (B); B already aligned to A.
    data : Tensor x, pair (x, y), or iterable of such batches
    n_points : int
        Points of the uniform grid on [0, 1] (endpoints included), >= 2.
    loss_fn : callable (outputs, targets) -> per-sample losses, optional
        Default: cross-entropy (``targets`` are class indices).
    batch_size : int, optional
        Samples per forward for in-memory data.
    chunk_size : int, optional
        Networks per vectorised forward.
    progress : bool
        tqdm bar over chunks of networks.
    targets_per_pair : bool
        ``data`` is ``(x, y)`` with ``y`` of shape (B, N, ...): pair ``b``'s own targets for the
        shared inputs ``x`` (N, ...), e.g. the image that the two INRs of pair ``b`` fit
        (use ``loss_fn=squared_error``).
    correction : {None, "reset_bn", "repair"}
        Applied to every network on the path, endpoints included (``deepalign.reset_bn``,
        ``deepalign.repair``), before it is scored.
    correction_data : Tensor x, pair (x, y) or iterable of batches
        The data the correction measures statistics on (e.g. training images, not ``data``);
        required with a correction.

    Returns
    -------
    BarrierResult
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    loss_fn = loss_fn or default_loss
    a, b, batch = broadcast_pair(sd_a, sd_b, ranks_of(model))
    width = next(iter(a.values())).shape[0]
    if targets_per_pair and isinstance(data, (tuple, list)) and len(data) == 2 and (
            data[1].dim() < 2 or data[1].shape[0] != width):
        raise ValueError(f"data: targets_per_pair needs y of shape ({width}, N, ...) for "
                         f"{width} pairs, got {tuple(data[1].shape)}")
    lambdas = torch.linspace(0, 1, n_points, dtype=torch.float64)
    corrector = _prepare_correction(model, correction, correction_data, a, b)
    # network m is pair m // n_points at lambda index m % n_points
    total = width * n_points
    step = max(1, min(chunk_size or total, total))
    losses = []
    for start in tqdm(range(0, total, step), desc="loss barrier", disable=not progress):
        idx = torch.arange(start, min(start + step, total))
        pair, point = idx // n_points, idx % n_points
        stacked = {}
        for key, va in a.items():
            if va.is_floating_point():
                w = lambdas[point].to(va).reshape(-1, *([1] * (va.dim() - 1)))
                stacked[key] = torch.lerp(va[pair], b[key][pair], w)
            else:
                stacked[key] = va[pair]
        if corrector is not None:
            lam = lambdas[point]
            stacked = corrector(stacked, pair, torch.stack([1 - lam, lam], 1))
        losses.append(path_losses(model, stacked, data, loss_fn, batch_size,
                                  pair if targets_per_pair else None))
    curve = torch.cat([loss for loss, _ in losses]).reshape(width, n_points)
    barrier, auc, psi = barrier_from_losses(curve, lambdas)
    acc = acc_barrier = None
    if losses[0][1] is not None:
        acc = torch.cat([hits for _, hits in losses]).reshape(width, n_points)
        acc_barrier = barrier_from_losses(-acc, lambdas)[0]
    result = BarrierResult(barrier, auc, lambdas, curve, psi, acc, acc_barrier)
    if batch is None:
        # one pair: drop the pair axis of every per-pair field
        return BarrierResult(*(v if v is None or v is lambdas else v[0]
                               for v in vars(result).values()))
    return result


def _prepare_correction(model, correction, correction_data, a, b):
    if correction is None:
        return None
    from deepalign.correction import Correction  # the correction module builds on this one

    if correction_data is None:
        raise ValueError(f"correction={correction!r} needs correction_data (e.g. training "
                         "inputs) to measure statistics on")
    return Correction(correction, model, correction_data, (a, b))
