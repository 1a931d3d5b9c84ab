"""Set layers over all neuron sets of a network.

A network's ``K`` neuron sets (sizes ``d_0..d_{K-1}``) arrive as a list of tensors
``x_k`` of shape ``(B, d_k, c)``: no padding, so no work on padded rows and no masks. A set
whose output nobody reads is passed (and returned) as None. Every set
has its own parameters, stored stacked along a leading ``K`` axis (one parameter per role,
whatever the depth); a layer loops over the sets, one matrix product per set and role. Both
layers are permutation-equivariant within each set.
"""
import math

import torch
from torch import nn


def set_pool(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Pool ``x`` (B, d, c) over its ``d`` neurons -> (B, c)."""
    if reduction == "max":
        return x.amax(dim=1)
    if reduction == "mean":
        return x.mean(dim=1)
    raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")


def _dtype(xs: list) -> torch.dtype:
    return next(x for x in xs if x is not None).dtype


def _stacked(k: int, c_in: int, c_out: int) -> nn.Parameter:
    # Xavier-normal scaled by sqrt(2) (He-like gain for the ReLU that follows).
    std = math.sqrt(2.0) * math.sqrt(2.0 / (c_in + c_out))
    return nn.Parameter(torch.randn(k, c_in, c_out) * std)


class StackedLinear(nn.Module):
    """A separate ``Linear(c_in, c_out)`` per set: ``forward(k, x)`` applies set ``k``'s.

    ``x`` (B, d, c_in) -> (B, d, c_out), the bias added inside the matrix product.
    """

    def __init__(self, k: int, c_in: int, c_out: int):
        super().__init__()
        self.weight = _stacked(k, c_in, c_out)
        self.bias = nn.Parameter(torch.empty(k, c_out).uniform_(-1e-4, 1e-4))

    def forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.bias[k].to(x.dtype), x.reshape(-1, x.shape[-1]),
                        self.weight[k].to(x.dtype))
        return y.view(*x.shape[:-1], y.shape[-1])


class DeepSetsLayer(nn.Module):
    r"""DeepSets layer per set: :math:`y_i = \Gamma x_i + \Lambda\,\mathrm{pool}_j x_j + \beta`."""

    def __init__(self, k: int, c_in: int, c_out: int, reduction: str = "max"):
        super().__init__()
        self.elem = StackedLinear(k, c_in, c_out)
        self.pooled = nn.Parameter(_stacked(k, c_in, c_out).detach() * 0.5)
        self.reduction = reduction

    def forward(self, xs: list) -> list:
        pooled = self.pooled.to(_dtype(xs))
        # in place on each fresh product: its backward needs only the inputs
        return [None if x is None else
                self.elem(k, x).add_((set_pool(x, self.reduction) @ pooled[k])[:, None])
                for k, x in enumerate(xs)]


class SetAttentionLayer(nn.Module):
    r"""Set-Transformer self-attention block ``SAB(X) = MAB(X, X)`` per set, then a projection.

    ``O = Q + softmax(Q K^T / sqrt(h)) V`` (multi-head), ``O = O + relu(O W_o)``, ``y = O W_p``
    (Lee et al. 2019, without LayerNorm, as in Deep-Align's ``SAB``).
    """

    def __init__(self, k: int, c_in: int, c_out: int, heads: int = 8, hidden: int = None):
        super().__init__()
        hidden = hidden or max(heads, c_in)
        hidden -= hidden % heads
        if hidden < heads:
            raise ValueError(f"heads: {heads} heads need at least {heads} channels")
        self.heads = heads
        self.qkv = StackedLinear(k, c_in, 3 * hidden)
        self.mix = StackedLinear(k, hidden, hidden)
        self.proj = StackedLinear(k, hidden, c_out)

    def forward(self, xs: list) -> list:
        return [None if x is None else self._one(k, x) for k, x in enumerate(xs)]

    def _one(self, k: int, x: torch.Tensor) -> torch.Tensor:
        b, d, _ = x.shape
        q, key, v = self.qkv(k, x).chunk(3, dim=-1)
        split = lambda t: t.reshape(b, d, self.heads, -1).transpose(1, 2)  # noqa: E731
        q_h, k_h, v_h = split(q), split(key), split(v)  # (B, heads, d, h)
        # written out: for heads this narrow, ATen's fused CPU attention is 3x slower than
        # three batched matmuls
        scores = (q_h @ k_h.mT).mul_(q_h.shape[-1] ** -0.5)
        o = torch.softmax(scores, dim=-1) @ v_h
        o = q + o.transpose(1, 2).reshape(b, d, -1)
        o = o + torch.relu(self.mix(k, o))
        return self.proj(k, o)


def make_set_layer(kind: str, k: int, c_in: int, c_out: int, heads: int, reduction: str,
                   hidden: int = None):
    """``kind``: 'ds' (DeepSets) or 'sab' (self-attention with ``hidden`` channels)."""
    if kind == "ds":
        return DeepSetsLayer(k, c_in, c_out, reduction)
    if kind == "sab":
        return SetAttentionLayer(k, c_in, c_out, heads, hidden)
    raise ValueError(f"set_layer must be 'ds' or 'sab', got {kind!r}")
