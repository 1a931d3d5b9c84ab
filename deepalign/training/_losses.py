r"""Deep-Align's three training losses (Navon et al., ICML 2024, §3.2).

* supervised: cross-entropy of the similarity logits against the known perm of a labelled
  pair, over rows (each A neuron picks a B neuron) and over columns (each B neuron picks an
  A neuron), averaged: symmetric under swapping the pair;
* alignment: :math:`\sum_t \operatorname{mean}((v_t - (P \# v')_t)^2)` over the layer chain's
  tensors, with the soft plans ``P`` (the official code's per-tensor mean, not Eq. 2's sum,
  so wide layers do not dominate);
* interpolation: the task loss of :math:`\lambda v + (1 - \lambda) P \# v'` on images, one
  :math:`\lambda \sim U(0, 1)` per pair.
"""
import torch
import torch.nn.functional as F

from deepalign.evaluation._barrier import default_loss
from deepalign.models import batched_forward


def supervised_loss(logits: dict, target: dict) -> torch.Tensor:
    """Mean row/column cross-entropy over perms.

    Parameters
    ----------
    logits : dict of str to Tensor, (B, n, n)
        ``S[b, i, j]``: A's neuron ``i`` vs B's neuron ``j``.
    target : dict of str to LongTensor, (B, n)
        ``target[b, i] = j``: the B neuron that belongs at A's position ``i``.
    """
    total = 0.0
    for name, s in logits.items():
        p = target[name]
        n = s.shape[-1]
        rows = F.cross_entropy(s.reshape(-1, n), p.reshape(-1))
        cols = F.cross_entropy(s.mT.reshape(-1, n), p.argsort(dim=-1).reshape(-1))
        total = total + 0.5 * (rows + cols)
    return total / len(logits)


def alignment_loss(sd_a: dict, sd_b_aligned: dict, keys: list) -> torch.Tensor:
    """``sum_k mean((sd_a[k] - sd_b_aligned[k])^2)`` over ``keys``, averaged over the batch."""
    return sum(F.mse_loss(sd_b_aligned[k], sd_a[k]) for k in keys)


def interpolation_loss(model: torch.nn.Module, sd_a: dict, sd_b_aligned: dict, x: torch.Tensor,
                       y: torch.Tensor, lam: torch.Tensor, loss_fn=None) -> torch.Tensor:
    """Task loss of the interpolated networks ``lam * a + (1 - lam) * b``.

    Parameters
    ----------
    model : nn.Module
        The zoo architecture (its own weights are ignored).
    sd_a, sd_b_aligned : dict of str to Tensor, (B, *shape)
    x : Tensor, (N, *input_shape)
    y : Tensor, (N,) targets shared by all pairs, or (B, N, ...) each pair's own (INRs)
    lam : Tensor, (B,)
    loss_fn : callable(outputs (M, C), targets (M, ...)) -> per-sample losses (M,), optional
        Default: cross-entropy; the loss is their mean.
    """
    merged = {}
    for k, a in sd_a.items():
        w = lam.to(a).reshape(-1, *[1] * (a.dim() - 1))
        merged[k] = w * a + (1 - w) * sd_b_aligned[k] if a.is_floating_point() else a
    out = batched_forward(model, merged, x)  # (B, N, C)
    per_pair = y.dim() == out.dim()
    target = y.flatten(0, 1) if per_pair else y.expand(out.shape[0], *y.shape).flatten(0, 1)
    return (loss_fn or default_loss)(out.flatten(0, 1), target).mean()
