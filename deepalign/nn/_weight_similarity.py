r"""A data-agnostic similarity term for Deep-Align's head: weight matching's forward pass.

The learned similarity of ``DeepAlign`` reads a first-layer neuron's receptive field through
a few learned projections of its 784 inputs, which fit the training data's pixels; on networks
trained on other data its first-layer matches are wrong. This term compares neurons by their
raw weights, as weight matching does (Ainsworth et al., ICLR 2023), and needs no data:

.. math::
    C_k[i, j] = \frac{\langle u^A_{k,i},\ \Pi_{k-1}\text{-aligned}\ u^B_{k,j}\rangle}
                     {\lVert u^A_{k,i}\rVert\, \lVert u^B_{k,j}\rVert}, \qquad
    S_k = S^{\text{learned}}_k + \alpha_k C_k,

with ``u_{k,i}`` neuron ``i``'s incoming weights (all taps), its bias and, for the last hidden
set, its outgoing weights into the (fixed) outputs. B's incoming weights are first put into A's
order of the previous set by the aligner's own plan ``Pi_{k-1}`` of ``S_{k-1}``: a symmetrised
Sinkhorn plan while training (differentiable, so the learned part is trained to correct the
term), the exact assignment in eval mode (weight matching's forward sweep, corrected). The norms
are of the un-aligned rows, so ``C`` is a bilinear form in ``Pi`` and ``C(b, a) = C(a, b)^T``.
``alpha_k = exp(log_alpha_k) > 0`` is learned per hidden set.

Hidden permutations ``g, g'`` of A and B permute ``C_k``'s rows and columns and the plans
accordingly, so ``S`` stays H-equivariant and swap-symmetric.
"""
import math

import torch
from torch import nn

from deepalign import ops


class WeightSimilarity(nn.Module):
    """The term ``alpha_k C_k`` added along the layer chain (see the module docstring).

    Parameters
    ----------
    n_sets : int
        Hidden neuron sets (one learned weight each).
    init : float
        Initial ``alpha_k``: 20 makes the term alone a sharp plan (on Fashion-MNIST MLPs a
        20-iteration Sinkhorn plan puts 0.47 of the first layer's mass on weight matching's
        perm, at 5 only 0.11).
    """

    def __init__(self, n_sets: int, init: float = 20.0):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n_sets,), math.log(init)))

    def forward(self, learned: list, layers_a: tuple, layers_b: tuple, n_iters: int = 20,
                tau: float = 1.0) -> list:
        """Add the term to the learned logits, set by set.

        Parameters
        ----------
        learned : list of Tensor, (B, n_k, n_k)
            Learned logits of the hidden sets, in chain order.
        layers_a, layers_b : tuple (weights, biases)
            The layout's internal form: weights ``[(B, d_out, d_in, f)]``, biases
            ``[(B, d_out, 1)]`` (``WeightLayout.to_internal``).
        n_iters, tau : int, float
            Sinkhorn of the inner plans while training.

        Returns
        -------
        list of Tensor, (B, n_k, n_k)
        """
        (wa, ba), (wb, bb) = layers_a, layers_b
        alpha = self.log_alpha.exp()
        out, plan = [], None
        last = len(learned) - 1
        for k, s in enumerate(learned):
            fa, fb = _rows(wa, ba, k, last), _rows(wb, bb, k, last)
            norms = fa.norm(dim=-1)[:, :, None] * fb.norm(dim=-1)[:, None, :]
            if plan is not None:
                fb = _align_inputs(fb, wb[k], plan)
            cos = (fa @ fb.mT) / norms.clamp_min(1e-12)
            s = s + alpha[k].to(s.dtype) * cos.to(s.dtype)
            out.append(s)
            if k < last:
                plan = _inner_plan(s, self.training, n_iters, tau).to(fb.dtype)
        return out


def _rows(weights: list, biases: list, k: int, last: int) -> torch.Tensor:
    """(B, n_k, width): incoming weights, bias and (last hidden set) outgoing weights."""
    parts = [weights[k].flatten(2), biases[k]]
    if k == last:
        parts.append(weights[k + 1].transpose(1, 2).flatten(2))
    return torch.cat(parts, dim=-1)


def _align_inputs(rows: torch.Tensor, weight: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """Replace the incoming-weight block of B's rows by ``W_B Pi^T`` on the input axis."""
    b, n, d_in, f = weight.shape
    moved = torch.einsum("bjmf,bim->bjif", weight.to(rows.dtype), plan).reshape(b, n, d_in * f)
    return torch.cat([moved, rows[..., d_in * f:]], dim=-1)


def _inner_plan(s: torch.Tensor, soft: bool, n_iters: int, tau: float) -> torch.Tensor:
    if not soft:
        return ops.hard_permutation(s)
    # a column-then-row sweep is not transpose-symmetric; the average of both orders is
    return 0.5 * (ops.sinkhorn_project(s, n_iters, tau)
                  + ops.sinkhorn_project(s.mT.contiguous(), n_iters, tau).mT)
