"""The seven alignment methods of the Deep-Align paper's tables, behind one batched call."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from deepalign.baselines import activation_matching, sinkhorn_rebasin, weight_matching
from deepalign.comparison._refine import deep_align_start
from deepalign.evaluation import loss_barrier
from deepalign.weightspace import PermutationSpec, identity_permutations, permute

#: Method names in table order (Navon et al., ICML 2024, Tables 1–2).
METHODS = ("naive", "weight_matching", "activation_matching", "sinkhorn", "wm_sinkhorn",
           "deep_align", "deep_align_sinkhorn")

LABELS = {"naive": "Naive", "weight_matching": "Weight matching",
          "activation_matching": "Activation matching", "sinkhorn": "Sinkhorn re-basin",
          "wm_sinkhorn": "WM + Sinkhorn", "deep_align": "Deep-Align",
          "deep_align_sinkhorn": "Deep-Align + Sinkhorn"}
#: Extra rows for structured specs, run when the spec has attention heads: weight matching
#: that treats every head group's q/k and v units as free plain perms, which is not a symmetry
#: (issue #17's ablation: structure-aware weight matching must beat it).
ABLATIONS = ("wm_heads_plain",)
LABELS["wm_heads_plain"] = "WM, heads as plain perms (ablation)"
#: What a correction adds to a method's label.
CORRECTION_LABELS = {None: "", "reset_bn": " + BN reset", "repair": " + REPAIR"}


@dataclass
class AlignmentTask:
    """A batch of pairs to align (B to A) and what the methods may use.

    Attributes
    ----------
    model : nn.Module
        The architecture of every network.
    spec : PermutationSpec
    sd_a, sd_b : dict of str to Tensor, each entry (P, ...)
        P pairs of stacked state_dicts.
    train_data : tuple (x, y)
        Data the data-driven methods (activation matching, Sinkhorn re-basin) may use.
    aligner : DeepAlign, optional
        A trained aligner; without it the Deep-Align rows are skipped.
    sinkhorn_steps : int
        Optimisation steps of Sinkhorn re-basin (and of the two "+ Sinkhorn" refinements).
    seed : int
    record_steps : tuple of int
        Steps at which the Sinkhorn-based methods' rounded perms are kept in
        ``trajectories[method][step]`` (for barrier-against-steps curves).
    loss_fn : callable (outputs, targets) -> per-sample losses, optional
        The task loss of Sinkhorn re-basin and of the barriers (default cross-entropy).
    targets_per_pair : bool
        ``train_data`` and test data are ``(x, y)`` with ``y`` (P, N, ...): each pair's own
        targets (INR pairs: two fits of one image, scored against that image).
    correction_data : Tensor, optional
        Inputs that corrections (REPAIR, BN reset) measure statistics on.
    """
    model: torch.nn.Module
    spec: PermutationSpec
    sd_a: Mapping
    sd_b: Mapping
    train_data: tuple
    aligner: object = None
    sinkhorn_steps: int = 1000
    seed: int = 0
    progress: bool = False
    record_steps: tuple = ()
    loss_fn: object = None
    targets_per_pair: bool = False
    correction_data: object = None
    trajectories: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_pairs(self) -> int:
        return next(iter(self.sd_a.values())).shape[0]

    def barrier(self, perms: Mapping, test_data, n_points: int = 25,
                correction: str | None = None, spec: PermutationSpec | None = None):
        """``loss_barrier`` between A and B aligned by ``perms`` (perms of ``spec``, the task's
        by default), for every pair at once, with ``correction`` (None, "reset_bn" or
        "repair") on ``correction_data``."""
        aligned = permute(self.sd_b, spec or self.spec, perms)
        return loss_barrier(self.model, self.sd_a, aligned,
                            test_data, n_points=n_points, loss_fn=self.loss_fn,
                            targets_per_pair=self.targets_per_pair, correction=correction,
                            correction_data=self.correction_data if correction else None)


def _refine(task: AlignmentTask, name: str, init: Mapping | None) -> dict:
    record = set(task.record_steps)
    kept = task.trajectories.setdefault(name, {})

    def keep(step, perms):
        if step in record:
            kept[step] = perms

    return sinkhorn_rebasin(task.model, task.sd_a, task.sd_b, task.spec, task.train_data,
                            init=init, n_steps=task.sinkhorn_steps, seed=task.seed,
                            loss_fn=task.loss_fn, targets_per_pair=task.targets_per_pair,
                            progress=task.progress, callback=keep if record else None)


def _deep_align(task: AlignmentTask) -> dict:
    perms, task._cache["deep_align_init"] = deep_align_start(task.aligner, task.sd_a, task.sd_b)
    return perms


def heads_as_plain(spec: PermutationSpec) -> PermutationSpec:
    """``spec`` without its attention-head block groups: q/k and v perms become free."""
    kept = [g for g in spec.block_groups if g.kind != "heads"]
    return PermutationSpec(spec.axes_to_perm, spec.sizes, kept)


def method_spec(task: AlignmentTask, name: str) -> PermutationSpec:
    """The spec whose perms method ``name`` returns (the task's, except for ablations)."""
    return heads_as_plain(task.spec) if name == "wm_heads_plain" else task.spec


_SOLVERS: dict[str, Callable] = {
    "naive": lambda t: identity_permutations(t.spec.check(t.sd_b, batched=True), t.n_pairs),
    "weight_matching": lambda t: weight_matching(t.sd_a, t.sd_b, t.spec, seed=t.seed),
    # activations need inputs only
    "activation_matching": lambda t: activation_matching(t.model, t.sd_a, t.sd_b, t.spec,
                                                         t.train_data[0]),
    "sinkhorn": lambda t: _refine(t, "sinkhorn", None),
    "wm_sinkhorn": lambda t: _refine(t, "wm_sinkhorn", t._cache["weight_matching"][0]),
    "deep_align": _deep_align,
    "deep_align_sinkhorn": lambda t: _refine(t, "deep_align_sinkhorn",
                                             t._cache["deep_align_init"]),
    "wm_heads_plain": lambda t: weight_matching(t.sd_a, t.sd_b, heads_as_plain(t.spec),
                                                seed=t.seed),
}

# Refinements reuse their initialiser's perms and add its time to theirs, as the paper's
# runtime column does (WM + Sinkhorn = 0.21 s + 79.81 s).
_DEPENDS = {"wm_sinkhorn": "weight_matching", "deep_align_sinkhorn": "deep_align"}


def run_method(task: AlignmentTask, name: str) -> tuple:
    """Align the task's pairs with method ``name``.

    Returns
    -------
    perms : dict of str to Tensor, int64 (P, n)
    seconds : float
        Wall time for all P pairs, the initialiser's included for "+ Sinkhorn" methods.
    """
    if name not in _SOLVERS:
        raise ValueError(f"method must be one of {METHODS + ABLATIONS}, got {name!r}")
    if name.startswith("deep_align") and task.aligner is None:
        raise ValueError(f"method {name!r} needs a trained aligner")
    if name in task._cache:
        return task._cache[name]
    before = 0.0
    if name in _DEPENDS:
        before = run_method(task, _DEPENDS[name])[1]
    start = time.perf_counter()
    perms = _SOLVERS[name](task)
    task._cache[name] = (perms, before + time.perf_counter() - start)
    return task._cache[name]
