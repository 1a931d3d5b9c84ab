r"""Input-dimension down-sampling of the first weight (Deep-Align's ``DownSampleCannibalLayer``).

A first weight ``W_1`` of shape (B, d_1, d_0, c) with a wide input axis (784 pixels) dominates
the cost of every equivariant layer. Each row is summarised into ``k`` learned slots by
attention pooling along the input axis plus a learned linear projection of it,

.. math::
    a_{ijs} = \operatorname{softmax}_j\big(W_1[i, j] \cdot q_s / \sqrt{c}\big), \qquad
    S[i, s] = \sum_j (a_{ijs} + R_{sj}) W_1[i, j],

the equivariant layer runs on ``S`` (B, d_1, k, c), and the result is spread back with the
attention weights plus a linear skip: ``W'_1[i, j] = sum_s a_{ijs} S'[i, s] + W_1[i, j] A_skip``.
The attention sees only the values of a row, so it cannot tell which input a weight reads;
the projection ``R`` (k, d_0) can (the input axis is never permuted), and it carries what
weight matching compares a first-layer neuron by: its incoming weights, input by input.
Without it a neuron's receptive field is invisible and first-layer matches on Fashion-MNIST
are mostly wrong. Cost is O(d_1 d_0 k c) instead of O(d_1 d_0 c^2). Rows are pooled
independently, so hidden permutations commute with it.
"""
import math

import torch
from torch import nn


class InputDownsample(nn.Module):
    """Attention pooling of the input axis to ``k`` slots and the matching up-sampling.

    ``c_out=None``: pooling only (a layer whose weight outputs are not needed). ``d_in`` is
    the width of the input axis (``d_0``).
    """

    def __init__(self, c_in: int, c_out: int, k: int, d_in: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(k, c_in) / math.sqrt(c_in))
        # a random projection keeps inner products of rows on average (Johnson-Lindenstrauss),
        # so matching can use the receptive fields from the first step
        self.projection = nn.Parameter(torch.randn(k, d_in) / math.sqrt(d_in))
        self._register_load_state_dict_pre_hook(_zero_projection_if_missing, with_module=True)
        self.skip = (None if c_out is None else
                     nn.Parameter(torch.randn(c_in, c_out) * math.sqrt(2.0 / (c_in + c_out))))

    def pool(self, w: torch.Tensor) -> tuple:
        """``w`` (B, d_1, d_0, c) -> slots (B, d_1, k, c) and weights (B, d_1, k, d_0)."""
        queries = self.queries.to(w.dtype) / math.sqrt(w.shape[-1])
        # logits come out slots first, inputs last: the softmax runs along contiguous memory
        # with no transposing copy (along a middle axis of stride k it is several times slower)
        attn = torch.softmax(queries @ w.mT, dim=3)
        # the projection's product on its own: adding it to attn would be an extra pass over
        # the (B, d_1, k, d_0) weights (together 1.6x faster on Fashion-MNIST MLPs)
        return attn @ w + (w.mT @ self.projection.T.to(w.dtype)).mT, attn

    def unpool(self, slots: torch.Tensor, attn: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """slots (B, d_1, k, c_out), weights (B, d_1, k, d_0), w (B, d_1, d_0, c)
        -> (B, d_1, d_0, c_out)."""
        b, d_1, d_0, _ = w.shape
        # the attention term accumulates in place into the skip's fresh (non-view) output
        out = w.reshape(b * d_1, d_0, -1) @ self.skip.to(w.dtype)
        out.baddbmm_(attn.reshape(b * d_1, -1, d_0).transpose(1, 2),
                     slots.reshape(b * d_1, slots.shape[2], -1))
        return out.view(b, d_1, d_0, -1)


def _zero_projection_if_missing(module, state_dict, prefix, *_):
    # files saved before the projection existed: a zero projection is exactly their pooling
    if prefix + "queries" in state_dict and prefix + "projection" not in state_dict:
        state_dict[prefix + "projection"] = torch.zeros_like(module.projection)
