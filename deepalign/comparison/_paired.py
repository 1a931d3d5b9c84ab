"""One method against another on the same pairs: their barrier ratio, with its uncertainty.

A ratio of mean barriers over 25 test pairs moves by several hundredths with the choice of
pairs alone, so a ratio is reported with a paired bootstrap interval (the pairs resampled
jointly for both methods) and the mean paired difference with its standard error.
"""
import math

import torch


def paired_ratio(values, baseline, resamples: int = 10_000, confidence: float = 0.95,
                 seed: int = 0) -> dict:
    """Compare per-pair ``values`` with ``baseline`` measured on the same pairs.

    Parameters
    ----------
    values, baseline : sequence of float or 1-D Tensor, length n >= 2
        Per-pair scores (barriers, say) of the method and of the reference method.
    resamples : int
        Bootstrap resamples of the n pairs (drawn with replacement, the same draw for both).
    confidence : float in (0, 1)
        Coverage of the percentile interval.
    seed : int

    Returns
    -------
    dict with ``ratio`` (mean of values / mean of baseline), ``interval`` ([low, high] of
    that ratio), ``diff_mean`` and ``diff_se`` (values - baseline, its mean and standard
    error), ``lower_on`` (pairs where values < baseline) and ``pairs`` (n).
    """
    v = _scores("values", values)
    b = _scores("baseline", baseline)
    if v.shape != b.shape:
        raise ValueError(f"values and baseline must score the same pairs, got {v.numel()} and "
                         f"{b.numel()} scores")
    if v.numel() < 2:
        raise ValueError(f"values: need at least 2 pairs, got {v.numel()}")
    if not b.mean() > 0:
        raise ValueError(f"baseline: the mean must be positive for a ratio, got {float(b.mean())}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    n = v.numel()
    draw = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    ratios = v[draw].mean(1) / b[draw].mean(1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(ratios, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    diff = v - b
    return {"ratio": float(v.mean() / b.mean()), "interval": [float(low), float(high)],
            "diff_mean": float(diff.mean()), "diff_se": float(diff.std() / math.sqrt(n)),
            "lower_on": int((v < b).sum()), "pairs": n}


def _scores(name: str, scores) -> torch.Tensor:
    t = torch.as_tensor(scores, dtype=torch.float64)
    if t.dim() != 1:
        raise ValueError(f"{name}: expected one score per pair (1-D), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: scores must be finite")
    return t
