"""Normalisation, activation and dropout over a ``(weights, biases)`` tuple.

Each acts on the channel (last) axis only, so all of them commute with permutations of the
neuron axes. BatchNorm's statistics run over the batch *and* all entries of a tensor (a set
statistic): permuting neurons does not change them.
"""
import torch
from torch import nn


class TupleBatchNorm(nn.Module):
    """One BatchNorm over the channels per weight and per bias tensor (2 L of them).

    Parameters are stacked (``(2 L, c)``), one module for the whole network.
    """

    def __init__(self, n_layers: int, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(2 * n_layers, channels))
        self.bias = nn.Parameter(torch.zeros(2 * n_layers, channels))
        self.register_buffer("running_mean", torch.zeros(2 * n_layers, channels))
        self.register_buffer("running_var", torch.ones(2 * n_layers, channels))

    def forward(self, weights: list, biases: list) -> tuple:
        out = []
        for t, x in enumerate(list(weights) + list(biases)):
            if self.training:
                # written out: ATen's (N, C) channels-last CPU batch_norm is ~10x slower here
                var, mean = torch.var_mean(x.reshape(-1, x.shape[-1]), dim=0, correction=0)
                with torch.no_grad():
                    n = x.numel() // x.shape[-1]
                    self.running_mean[t].lerp_(mean, self.momentum)
                    self.running_var[t].lerp_(var * n / max(n - 1, 1), self.momentum)
            else:
                var, mean = self.running_var[t], self.running_mean[t]
            scale = self.weight[t] * torch.rsqrt(var + self.eps)
            out.append(torch.addcmul(self.bias[t] - mean * scale, x, scale))
        return out[:len(weights)], out[len(weights):]


class TupleReLU(nn.Module):
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
        drop = lambda x: torch.nn.functional.dropout(x, self.p, self.training)  # noqa: E731
        return [drop(w) for w in weights], [drop(b) for b in biases]
