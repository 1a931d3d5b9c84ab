"""Normalisation, activation and dropout over a ``(weights, biases)`` tuple.

Each acts on the channel (last) axis only, so all of them commute with permutations of the
neuron axes. BatchNorm's statistics run over the batch *and* all entries of a tensor (a set
statistic): permuting neurons does not change them.
"""
import torch
import torch.nn.functional as F
from torch import nn


class TupleBatchNorm(nn.Module):
    """One BatchNorm over the channels per weight and per bias tensor (2 L of them), with an
    optional ReLU after it.

    Parameters are stacked (``(2 L, c)``), one module for the whole network. Each tensor is
    handed to ``F.batch_norm`` as a channels-last 4-D view (channels are our last axis), which
    selects ATen's fused channels-last kernels (one pass for the statistics, one to normalise,
    a fused backward) without any copy. ``relu=True`` applies the ReLU in place on the fresh
    normalised tensor: no extra entry-sized tensor per layer.
    """

    def __init__(self, n_layers: int, channels: int, momentum: float = 0.1, eps: float = 1e-5,
                 relu: bool = False):
        super().__init__()
        self.momentum, self.eps, self.relu = momentum, eps, relu
        self.weight = nn.Parameter(torch.ones(2 * n_layers, channels))
        self.bias = nn.Parameter(torch.zeros(2 * n_layers, channels))
        self.register_buffer("running_mean", torch.zeros(2 * n_layers, channels))
        self.register_buffer("running_var", torch.ones(2 * n_layers, channels))

    def relu_affine(self) -> tuple:
        """``(scale, shift)``, (2 L, c): in eval mode this module is ``relu(x * scale + shift)``
        (see ``WeightSpaceLayer.forward``, which folds it)."""
        if not self.relu:
            raise ValueError("only a BatchNorm followed by its ReLU folds into relu_affine")
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, weights: list, biases: list) -> tuple:
        out = []
        for t, x in enumerate(list(weights) + list(biases)):
            # (B, ..., c) -> (B, c, rows, cols) with stride 1 on c: channels-last, no copy
            view = x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1]).permute(0, 3, 1, 2)
            y = F.batch_norm(view, self.running_mean[t], self.running_var[t], self.weight[t],
                             self.bias[t], self.training, self.momentum, self.eps)
            if self.relu:  # on the base tensor: in place on a view would cost a copy backward
                y = y.relu_()
            out.append(y.permute(0, 2, 3, 1).reshape(x.shape))
        return out[:len(weights)], out[len(weights):]


class TupleReLU(nn.Module):
    def relu_affine(self) -> tuple:
        return None, None  # relu(x): no scale, no shift

    def forward(self, weights: list, biases: list) -> tuple:
        return [torch.relu(w) for w in weights], [torch.relu(b) for b in biases]


class TupleDropout(nn.Module):
    """Element-wise dropout on every tensor; identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, weights: list, biases: list) -> tuple:
        drop = lambda x: F.dropout(x, self.p, self.training)  # noqa: E731
        return [drop(w) for w in weights], [drop(b) for b in biases]
