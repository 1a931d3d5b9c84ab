"""Barrier against optimisation steps for the Sinkhorn-based methods (Navon et al., Fig. 4)."""
from __future__ import annotations

import os

import torch

from deepalign.comparison._methods import LABELS, AlignmentTask


def record_steps(n_steps: int, points: int = 12) -> tuple:
    """Roughly log-spaced steps from 0 to ``n_steps`` (both included), plus ``n_steps // 5``:
    whether Deep-Align + Sinkhorn reaches Sinkhorn re-basin's final barrier within a fifth of
    its steps is read there exactly, not at the next grid point."""
    grid = torch.logspace(0, torch.log10(torch.tensor(float(max(n_steps, 1)))), points)
    return tuple(sorted({0, n_steps, n_steps // 5, *(int(round(float(s))) for s in grid)}))


def barrier_by_step(task: AlignmentTask, test_data, n_points: int = 11) -> dict:
    """Mean test barrier over the task's pairs at each recorded step of each method.

    Needs ``task.record_steps`` set before the methods ran. Returns
    ``{method: {"steps": [...], "barrier": [...]}}``.
    """
    out = {}
    for name, kept in task.trajectories.items():
        steps = sorted(kept)
        barriers = [float(task.barrier(kept[s], test_data, n_points).barrier.mean())
                    for s in steps]
        out[name] = {"steps": steps, "barrier": barriers}
    return out


def steps_to_reach(curve: dict, target: float):
    """The first recorded step whose barrier is <= ``target``, or None."""
    return next((s for s, b in zip(curve["steps"], curve["barrier"]) if b <= target), None)


def speedup_summary(curves: dict) -> dict:
    """How many steps Deep-Align + Sinkhorn needs to reach Sinkhorn re-basin's final barrier."""
    if "sinkhorn" not in curves or "deep_align_sinkhorn" not in curves:
        return {}
    final = curves["sinkhorn"]["barrier"][-1]
    total = curves["sinkhorn"]["steps"][-1]
    reached = steps_to_reach(curves["deep_align_sinkhorn"], final)
    return {"sinkhorn_final_barrier": final, "sinkhorn_steps": total,
            "deep_align_sinkhorn_steps_to_reach": reached,
            "fraction_of_steps": None if reached is None else reached / max(total, 1)}


def plot_barrier_by_step(curves: dict, path, title: str) -> str:
    """PNG of mean barrier against steps, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        ax.plot([s + 1 for s in c["steps"]], c["barrier"], marker="o", label=LABELS[name])
    ax.set_xscale("log")
    ax.set_xlabel("optimisation steps + 1")
    ax.set_ylabel("mean test barrier")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)
