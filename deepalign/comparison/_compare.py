"""Evaluate every alignment method on the same pairs: barrier, AUC, time, mean curves."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from deepalign.comparison._methods import (ABLATIONS, CORRECTION_LABELS, LABELS, METHODS,
                                           AlignmentTask, method_spec, run_method)
from deepalign.evaluation import BarrierResult
from deepalign.evaluation._barrier import barrier_from_losses


@dataclass
class MethodResult:
    """One method's outcome over P pairs.

    Attributes
    ----------
    name : str
        One of ``METHODS`` or ``ABLATIONS``.
    curve : BarrierResult
        Per-pair barrier and AUC, shape (P,) (clipped at 0; Navon et al. §6), and the test
        loss along the linear path from A (lambda 0) to aligned B (lambda 1), shape (P, L).
    seconds_per_pair : float
        Time to align (a correction's time is not counted: it is part of merging).
    correction : {None, "reset_bn", "repair"}
        Applied to every network on the path before it was scored.
    """
    name: str
    curve: BarrierResult
    seconds_per_pair: float
    correction: str | None = None

    @property
    def label(self) -> str:
        return LABELS[self.name] + CORRECTION_LABELS[self.correction]

    def summary(self) -> dict:
        """JSON-ready means, standard deviations and the mean curve."""
        c = self.curve
        std = (lambda t: float(t.std())) if c.barrier.numel() > 1 else (lambda t: 0.0)
        out = {"method": self.name, "label": self.label, "correction": self.correction,
               "barrier_mean": float(c.barrier.mean()), "barrier_std": std(c.barrier),
               "auc_mean": float(c.auc.mean()), "auc_std": std(c.auc),
               "seconds_per_pair": self.seconds_per_pair,
               "lambdas": c.lambdas.tolist(), "mean_loss": c.losses.mean(0).tolist(),
               "barrier": c.barrier.tolist(), "auc": c.auc.tolist()}
        if c.acc_barrier is not None:
            out.update({"acc_barrier_mean": float(c.acc_barrier.mean()),
                        "acc_barrier_std": std(c.acc_barrier),
                        "mean_accuracy": c.accuracies.mean(0).tolist(),
                        "acc_barrier": c.acc_barrier.tolist()})
        return out


def compare_methods(task: AlignmentTask, test_data: tuple, methods: Sequence[str] = METHODS,
                    n_points: int = 25, corrections: Sequence = (None,),
                    skip_unsupported: bool = False) -> list:
    """Run ``methods`` on the task's pairs and measure each on ``test_data``.

    Every method sees the same pairs; barriers are computed for all pairs at once
    (``deepalign.loss_barrier``), once per entry of ``corrections`` (None, "reset_bn",
    "repair"; measured on ``task.correction_data``). Returns a list of :class:`MethodResult`,
    method by method in ``methods`` order, each with its ``corrections`` in order. With
    ``skip_unsupported``, a method that raises ``NotImplementedError`` for this spec (e.g.
    activation matching on packed q/k/v) is left out with a printed note instead.
    """
    unknown = [m for m in methods if m not in METHODS + ABLATIONS]
    if unknown:
        raise ValueError(f"methods must be among {METHODS + ABLATIONS}, got {unknown}")
    wrong = [c for c in corrections if c not in CORRECTION_LABELS]
    if wrong:
        raise ValueError(f"corrections must be among {list(CORRECTION_LABELS)}, got {wrong}")
    results = []
    for name in methods:
        try:
            perms, seconds = run_method(task, name)
        except NotImplementedError as exc:
            if not skip_unsupported:
                raise
            print(f"skipped {LABELS[name]}: {exc}")
            continue
        for correction in corrections:
            curve = task.barrier(perms, test_data, n_points, correction,
                                 method_spec(task, name))
            if name in ABLATIONS:
                curve = _against_own_endpoints(task, test_data, correction, curve)
            results.append(MethodResult(name, curve, seconds / task.n_pairs, correction))
    return results


def _against_own_endpoints(task: AlignmentTask, test_data, correction, curve) -> BarrierResult:
    """Re-measure an ablation's path against A's and B's own losses and accuracies.

    Its perms are no symmetry, so its path ends at a different (worse) network than B; a
    line drawn to that end would hide the damage. The endpoints come from the identity path.
    """
    ends = task.barrier(run_method(task, "naive")[0], test_data, 2, correction)
    barrier, auc, psi = barrier_from_losses(curve.losses, curve.lambdas,
                                            (ends.losses[..., 0], ends.losses[..., -1]))
    acc_barrier = curve.acc_barrier
    if curve.accuracies is not None:
        acc_barrier = barrier_from_losses(-curve.accuracies, curve.lambdas,
                                          (-ends.accuracies[..., 0], -ends.accuracies[..., -1]))[0]
    return replace(curve, barrier=barrier, auc=auc, psi=psi, acc_barrier=acc_barrier)
