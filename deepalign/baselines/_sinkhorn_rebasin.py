"""Sinkhorn re-basin (Peña et al., CVPR 2023): learned soft permutations, batched over pairs."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deepalign.evaluation._barrier import default_loss, per_sample_loss
from deepalign.evaluation._data import sample_batches
from deepalign.evaluation._forward import forward_eval
from deepalign.baselines._block_assignment import assign_perms
from deepalign.ops import sinkhorn_project
from deepalign.weightspace._pairs import broadcast_pair, ranks_of
from deepalign.weightspace._perm_sets import compose_permutations
from deepalign.weightspace._permute import classify_perms, permute_tensor
from deepalign.weightspace._spec import PermutationSpec


def _initial_logits(init, spec, sizes: dict, width: int, scale: float, generator,
                    like) -> dict:
    if init is None:  # I + 0.1 N(0, 1), the random init of the Sinkhorn re-basin example
        return {name: torch.eye(n, dtype=like.dtype, device=like.device)
                + 0.1 * torch.randn(width, n, n, generator=generator).to(like)
                for name, n in sizes.items()}
    batch, hard = classify_perms(init, sizes)
    spec.check_structure(init)
    if batch not in (None, width):
        raise ValueError(f"init has batch size {batch}, the pairs {width}")
    logits = {}
    for name, p in init.items():
        q = scale * F.one_hot(p, sizes[name]) if hard[name] else p
        logits[name] = q.to(like).expand(width, sizes[name], sizes[name]).clone()
    return logits


def _soft_perm(q: torch.Tensor, blocks, n_sinkhorn: int, tau: float,
               grad_mode: str) -> torch.Tensor:
    """``sinkhorn_project`` of logits (W, n, n); for a convolution-group perm (``blocks``
    groups) only the diagonal blocks are projected and the result is block diagonal."""
    if blocks is None:
        return sinkhorn_project(q, n_sinkhorn, tau, grad_mode)
    width, n, m = q.shape[0], q.shape[-1], q.shape[-1] // blocks
    diagonal = q.reshape(width, blocks, m, blocks, m).diagonal(dim1=1, dim2=3)  # (W, m, m, G)
    inner = sinkhorn_project(diagonal.permute(0, 3, 1, 2).reshape(-1, m, m), n_sinkhorn, tau,
                             grad_mode)
    inner = inner.reshape(width, blocks, m, m).permute(0, 2, 3, 1)
    return torch.diag_embed(inner).permute(0, 3, 1, 4, 2).reshape(width, n, n)


def sinkhorn_rebasin(model: torch.nn.Module, sd_a: Mapping, sd_b: Mapping,
                     spec: PermutationSpec, data, init: Mapping | None = None,
                     n_steps: int = 1000, lr: float = 5e-2, n_sinkhorn: int = 20,
                     tau: float = 1.0, l2_weight: float = 1.0, init_scale: float = 1.0,
                     batch_size: int = 128, loss_fn: Callable | None = None, seed: int = 0,
                     grad_mode: str = "unrolled", progress: bool = False,
                     callback: Callable | None = None, targets_per_pair: bool = False) -> dict:
    r"""Align B to A with learned soft permutations (the "C_Rnd" Sinkhorn baseline).

    Each permutation of each pair is parameterised by free logits ``Q`` of shape (n, n) and
    made soft by ``P = sinkhorn_project(Q, n_sinkhorn, tau)``; the soft-permuted
    :math:`\pi_P(B)` (``P @ W`` along each axis) enters the loss

    .. math:: \mathcal{L} = \ell\big((1 - \lambda) A + \lambda \pi_P(B)\big)
              + w_{L2} \, \mathrm{mean}\big((A - \pi_P(B))^2\big),
              \quad \lambda \sim U(0, 1) \text{ per pair and step},

    with the task loss :math:`\ell` on a random minibatch of ``data`` and the mean over all
    parameters (not buffers) in the L2 term. Adam minimises the mean over pairs (each pair's
    logits get their own gradient). At the end, the hard permutation is the linear assignment
    maximising :math:`\sum_i Q_{i, p_i}` (the same as on :math:`\log P`, which differs from
    ``Q / tau`` by row and column constants).

    Structured specs (docs/CONTRACTS.md): concatenated axes (packed q/k/v) take the soft
    perms of their segments side by side. Attention heads are relaxed: each member's soft
    perm ranges over all doubly stochastic matrices, mixing across heads included, and the
    structure is imposed at rounding, where every heads group is rounded hierarchically on its
    members' logits (the best block permutation with the best permutations inside the blocks,
    as weight matching solves a group). Convolution groups are restricted instead, since a
    soft perm that mixes groups is no grouped convolution: their soft perms are block
    diagonal (Sinkhorn inside each group), so the groups keep the order they start in: B's
    own, or the order of a hard ``init`` (weight matching's, say), which may move them.

    A hard ``init`` is applied to B first, and the soft perms start from the identity around
    it (logits ``init_scale * I``); Sinkhorn's projection and Adam commute with relabelling
    rows and columns, so this is the same descent as starting from ``onehot(init)``.

    Defaults follow Deep-Align's ``CLFBatchSinkhorn`` (Navon et al., ICML 2024): Adam,
    lr 5e-2, 20 Sinkhorn iterations at tau = 1, 1000 steps, the L2 term on. BatchNorm layers
    run in eval mode on the (soft-permuted, interpolated) running statistics.

    Parameters
    ----------
    model : nn.Module
        The architecture; not modified.
    sd_a, sd_b : dict of str to Tensor
        Single state_dicts or batches (B). Not modified.
    spec : PermutationSpec
    data : Tensor x, pair (x, y), or iterable of such batches
        Minibatches of ``batch_size`` are drawn at random from in-memory data.
    init : dict of str to Tensor, optional
        Starting point: hard perms (``(n,)``/``(B, n)``, e.g. from weight matching or
        Deep-Align) become logits ``init_scale * onehot(p)``; float ``(n, n)``/``(B, n, n)``
        tensors are used as logits directly. Default: ``I + 0.1 N(0, 1)``. Scale 1 lets Adam
        leave the init within tens of steps; at 10 refinement stalled for hundreds (32 digits
        MLP pairs, 300 steps from weight matching: barrier 0.134 at scale 1, 0.172 at 3).
    n_steps, lr, n_sinkhorn, tau, l2_weight, init_scale, batch_size, seed
        As described above; ``seed`` drives the init noise, the minibatches and lambda.
    grad_mode : {"unrolled", "implicit"}
        Gradient of the Sinkhorn layer (``deepalign.ops.sinkhorn_project``). The paper's code
        differentiates implicitly at the fixed point; the default, the exact gradient of the
        ``n_sinkhorn`` iterations, stays well conditioned when ``P`` is nearly a permutation
        (as after a hard ``init``).
    loss_fn : callable (outputs, targets) -> per-sample losses, optional
        Default: cross-entropy (``reduction='none'``), as in ``loss_barrier``.
    progress : bool
        tqdm bar over steps.
    callback : callable (step, perms) -> None, optional
        Called before the first step (``step = 0``) and after every step with the hard perms
        that rounding the current logits gives (``(B, n)`` per name); for convergence studies.
    targets_per_pair : bool
        ``data`` is ``(x, y)`` with ``y`` (B, N, ...): each pair's own targets for the shared
        inputs (INR pairs fitting one image; pass ``loss_fn=deepalign.evaluation.squared_error``).

    Returns
    -------
    dict of str to Tensor
        Hard perms, int64 ``(n,)`` or ``(B, n)``.
    """
    if n_steps < 0 or n_sinkhorn < 0 or tau <= 0 or lr <= 0:
        raise ValueError("need n_steps >= 0, n_sinkhorn >= 0, tau > 0 and lr > 0")
    loss_fn = loss_fn or default_loss
    spec.check(model)
    a, b, batch = broadcast_pair(sd_a, sd_b, ranks_of(spec))
    sizes = spec.check(a, batched=True)
    width = next(iter(a.values())).shape[0]
    floats = [k for k in a if a[k].is_floating_point()]
    group_blocks = {p: g.blocks for g in spec.block_groups if g.kind == "groups"
                    for p in g.perms}
    base, (init_batch, hard) = None, classify_perms(init, sizes) if init else (None, {})
    if hard and all(hard.values()):
        spec.check_structure(init)
        if init_batch not in (None, width):
            raise ValueError(f"init has batch size {init_batch}, the pairs {width}")
        base = {name: p.expand(width, -1) for name, p in init.items()}
        b = {k: permute_tensor(v, spec.axes_to_perm[k], base) if k in floats else v
             for k, v in b.items()}
        device = next(iter(a.values())).device
        init = {name: torch.arange(n, device=device) for name, n in sizes.items()}
    # BatchNorm statistics are permuted softly too, but no gradient flows through them
    buffers = {name for name, _ in model.named_buffers()}
    like = a[floats[0]]
    generator = torch.Generator().manual_seed(seed)
    logits = _initial_logits(init, spec, sizes, width, init_scale, generator, like)
    for q in logits.values():
        q.requires_grad_(True)
    optimizer = torch.optim.Adam(list(logits.values()), lr=lr)
    a = {k: v.detach() for k, v in a.items()}
    weights = [k for k in floats if k not in buffers]
    n_weights = sum(a[k][0].numel() for k in weights)
    batches = sample_batches(data, batch_size, generator, targets_per_pair)
    def rounded() -> dict:
        found = assign_perms({name: q.detach() for name, q in logits.items()}, spec,
                             keep_group_order=True)
        return found if base is None else compose_permutations(base, found)

    if callback is not None:
        callback(0, rounded())
    for step in tqdm(range(1, n_steps + 1), desc="sinkhorn re-basin", disable=not progress):
        x, y = next(batches)
        if y is None:
            raise ValueError("sinkhorn_rebasin needs labelled data (x, y) for its task loss")
        soft = {name: _soft_perm(q, group_blocks.get(name), n_sinkhorn, tau, grad_mode)
                for name, q in logits.items()}
        permuted = {k: permute_tensor(v.detach(), spec.axes_to_perm[k], soft)
                    if k in floats else v for k, v in b.items()}
        lam = torch.rand(width, generator=generator).to(like)
        mixed = {k: torch.lerp(a[k], permuted[k], lam.reshape(-1, *([1] * (a[k].dim() - 1))))
                 if k in floats else a[k] for k in a}
        mixed = {k: v.detach() if k in buffers else v for k, v in mixed.items()}
        out = forward_eval(model, mixed, x)  # (B, N, ...)
        if targets_per_pair and y.shape[0] != width:
            raise ValueError(f"data: targets_per_pair needs y of shape ({width}, N, ...), got "
                             f"{tuple(y.shape)}")
        target = y.flatten(0, 1) if targets_per_pair else y.repeat(width, *([1] * (y.dim() - 1)))
        task = per_sample_loss(loss_fn, out.flatten(0, 1), target).reshape(width, -1).mean(1)
        l2 = sum(((a[k] - permuted[k]) ** 2).flatten(1).sum(1) for k in weights) / n_weights
        loss = (task + l2_weight * l2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if callback is not None:
            callback(step, rounded())
    perms = rounded()
    return perms if batch is not None else {k: p[0] for k, p in perms.items()}
