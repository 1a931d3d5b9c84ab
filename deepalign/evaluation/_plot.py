"""Interpolation curves as PNG."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from deepalign.evaluation._barrier import BarrierResult


def plot_barrier_curves(results: Mapping, path, title: str | None = None,
                        ylabel: str = "loss") -> Path:
    """Plot loss along the path for several methods (mean over pairs, ±1 std band) to a PNG.

    Parameters
    ----------
    results : dict of str to BarrierResult
        One entry per method (e.g. ``{"naive": ..., "weight matching": ...}``).
    path : str or Path
        Output file (``.png``); parent folders are created.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, result in results.items():
        if not isinstance(result, BarrierResult):
            raise TypeError(f"results[{label!r}] must be a BarrierResult")
        curves = result.losses.reshape(-1, len(result.lambdas)).cpu()
        mean, std = curves.mean(0), curves.std(0) if len(curves) > 1 else 0 * curves[0]
        barrier = result.barrier.double().mean().item()
        lam = result.lambdas.cpu()
        ax.plot(lam, mean, label=f"{label} (barrier {barrier:.3f})")
        ax.fill_between(lam, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("λ  (0 = A, 1 = aligned B)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
