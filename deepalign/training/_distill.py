r"""Amortising an expensive aligner: Deep-Align distilled from solved training pairs.

Weight matching followed by Sinkhorn re-basin (Peña et al., CVPR 2023) finds much better
perms than weight matching alone, at about a hundred times Deep-Align's cost per pair. Run
once, batched, on a few thousand pairs of the zoo's *training* networks, its perms become
targets for Deep-Align: the aligner learns to give in one forward pass what the optimiser
finds in hundreds of steps. No labels enter beyond the zoo's own training data (the images
the networks were trained on, which the interpolation loss uses anyway).

The loss (:func:`distillation_loss`) is the cross-entropy of the aligner's Sinkhorn plan
against the target perm,

.. math:: \ell_{distill} = -\frac{1}{2n} \sum_i \big(\log \hat P_{i, p_i}
          + \log \hat P^{col}_{p_i, i}\big), \qquad
          \log \hat P = \mathrm{sinkhorn}_{\log}(S / \tau),

with ``S`` the similarity logits, ``\hat P`` their log-domain Sinkhorn normalisation and
``\hat P^{col}`` its column-normalised counterpart; with 0 iterations it is the paper's
supervised row/column cross-entropy of the raw logits.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from deepalign._io import save_atomic
from deepalign.baselines import sinkhorn_rebasin, weight_matching
from deepalign.training._pairs import PartnerRule
from deepalign.weightspace import invert_permutations

_FORMAT = "deepalign.DistillationTargets/1"


def _log_sinkhorn(scores: torch.Tensor, n_iters: int, tau: float) -> tuple:
    """``(log P, log P')``: log-domain Sinkhorn of ``scores / tau`` (columns, then rows, as
    ``deepalign.ops.sinkhorn_project``) and the same iterate stopped after its last column
    step, so that both the rows of one and the columns of the other are exact log-softmaxes."""
    log_p = scores / tau
    log_cols = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)
    for _ in range(n_iters):
        log_cols = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)
        log_p = log_cols - torch.logsumexp(log_cols, dim=-1, keepdim=True)
    if n_iters == 0:
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    return log_p, log_cols


def distillation_loss(logits: dict, target: dict, n_iters: int = 20,
                      tau: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the Sinkhorn plans of ``logits`` against target perms.

    Parameters
    ----------
    logits : dict of str to Tensor, (B, n, n)
        Similarity logits ``S[b, i, j]`` of A's neuron ``i`` and B's neuron ``j``.
    target : dict of str to LongTensor, (B, n)
        ``target[b, i] = j``: the B neuron that belongs at A's position ``i``.
    n_iters : int
        Sinkhorn iterations (0: plain row and column softmax, the supervised loss).
    tau : float

    Returns
    -------
    Tensor, ()
        Mean over perms of the mean row/column negative log-likelihood; >= 0, and 0 only
        when every plan is the target permutation.
    """
    total = 0.0
    for name, s in logits.items():
        p = target[name].unsqueeze(-1)
        log_rows, log_cols = _log_sinkhorn(s, n_iters, tau)
        rows = -log_rows.gather(-1, p).mean()
        cols = -log_cols.mT.gather(-1, p.squeeze(-1).argsort(dim=-1).unsqueeze(-1)).mean()
        total = total + 0.5 * (rows + cols)
    return total / len(logits)


@dataclass
class DistillationTargets:
    """Solved training pairs: network ``a[k]`` with ``b[k]``, aligned by ``perms[.][k]``.

    Attributes
    ----------
    a, b : LongTensor, (N,)
        Indices into the stacked training networks.
    perms : dict of str to LongTensor, (N, n)
        Perms aligning ``b[k]`` to ``a[k]`` (``permute(b, spec, perms) ~ a``).
    seconds : float
        Wall time spent computing them.
    """
    a: torch.Tensor
    b: torch.Tensor
    perms: dict
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.a)

    def draw(self, n: int, generator: torch.Generator) -> tuple:
        """``(i, j, perms)`` of ``n`` random solved pairs, each swapped (B aligned to A
        becomes A aligned to B, with the inverse perms) with probability 1/2."""
        k = torch.randint(len(self), (n,), generator=generator)
        swap = torch.rand(n, generator=generator) < 0.5
        i, j = torch.where(swap, self.b[k], self.a[k]), torch.where(swap, self.a[k], self.b[k])
        perms = {name: p[k] for name, p in self.perms.items()}
        inverse = invert_permutations(perms)
        perms = {name: torch.where(swap[:, None], inverse[name], p) for name, p in perms.items()}
        return i, j, perms


def _payload(pairs, perms, done, seconds, settings) -> dict:
    return {"format": _FORMAT, "a": pairs[0], "b": pairs[1], "done": done,
            "perms": {k: v[:done] for k, v in perms.items()}, "seconds": seconds,
            "settings": settings}


def distillation_targets(nets: dict, spec, model, data: tuple, n_pairs: int = 2048,
                         sinkhorn_steps: int = 300, chunk: int = 256, seed: int = 0,
                         path: str | None = None, loss_fn=None,
                         progress: bool = False) -> DistillationTargets:
    """Weight matching + Sinkhorn re-basin perms of ``n_pairs`` random pairs of ``nets``.

    Pairs are drawn with ``seed`` (two different networks each) and solved ``chunk`` at a
    time: weight matching, then ``sinkhorn_steps`` steps of Sinkhorn re-basin started from
    it, on the training ``data`` (0 steps: weight matching's perms). With ``path`` the
    result is cached there, written atomically after every chunk; a later call with the same
    settings continues from what was done.

    Parameters
    ----------
    nets : dict of str to Tensor, (N, *shape)
        The training networks, stacked.
    spec : PermutationSpec
    model : nn.Module
        The zoo architecture.
    data : tuple (x, y)
        Training images and labels for Sinkhorn re-basin's task loss.
    n_pairs, sinkhorn_steps, chunk, seed : int
    path : str, optional
    loss_fn : callable, optional
        Per-sample task loss (default cross-entropy).
    progress : bool

    Returns
    -------
    DistillationTargets
    """
    if n_pairs < 1 or chunk < 1 or sinkhorn_steps < 0:
        raise ValueError(f"need n_pairs >= 1, chunk >= 1, sinkhorn_steps >= 0; got "
                         f"{n_pairs}, {chunk}, {sinkhorn_steps}")
    count = next(iter(nets.values())).shape[0]
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(count, (n_pairs,), generator=gen)
    pairs = (a, PartnerRule(count).draw(a, gen))
    settings = {"n_pairs": n_pairs, "sinkhorn_steps": sinkhorn_steps, "seed": seed,
                "count": count}
    perms, done, seconds = {}, 0, 0.0
    if path and os.path.exists(path):
        state = torch.load(path, weights_only=True)
        if state.get("format") != _FORMAT or state["settings"] != settings:
            raise ValueError(f"{path}: distillation targets of other settings "
                             f"({state.get('settings')}, not {settings}); remove it first")
        done, seconds, perms = int(state["done"]), float(state["seconds"]), state["perms"]
    sizes = spec.perm_sizes(nets, batched=True)
    perms = {name: torch.cat([perms.get(name, torch.empty(0, n, dtype=torch.long)),
                              torch.empty(n_pairs - done, n, dtype=torch.long)])
             for name, n in sizes.items()}
    while done < n_pairs:
        tick = time.perf_counter()
        rows = slice(done, min(done + chunk, n_pairs))
        sd_a = {k: v[pairs[0][rows]] for k, v in nets.items()}
        sd_b = {k: v[pairs[1][rows]] for k, v in nets.items()}
        solved = weight_matching(sd_a, sd_b, spec, seed=seed)
        if sinkhorn_steps:
            solved = sinkhorn_rebasin(model, sd_a, sd_b, spec, data, init=solved,
                                      n_steps=sinkhorn_steps, seed=seed + done,
                                      loss_fn=loss_fn)
        for name, p in solved.items():
            perms[name][rows] = p.cpu()
        done, seconds = rows.stop, seconds + time.perf_counter() - tick
        if progress:
            print(f"distillation targets: {done}/{n_pairs} pairs, {seconds / 60:.1f} min")
        if path:
            save_atomic(_payload(pairs, perms, done, seconds, settings), path)
    return DistillationTargets(pairs[0], pairs[1], perms, seconds)
