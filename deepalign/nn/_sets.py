"""Set layers over all neuron sets of a network at once.

The ``K`` neuron sets of a network (sizes ``d_0..d_{K-1}``) are zero-padded to one tensor
``x`` of shape ``(B, K, n, c)`` with a boolean ``mask`` of shape ``(K, n)`` (True = a real
neuron). Every set has its own parameters, stored stacked along a leading ``K`` axis, so one
einsum (one attention call) serves all sets: no Python loop over layers. Both layers are
permutation-equivariant within each set; padded rows hold garbage and are never read.
"""
import math

import torch
from torch import nn


def masked_pool(x: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Pool ``x`` (B, K, n, c) over the real neurons of each set -> (B, K, c)."""
    m = mask[None, :, :, None]
    if reduction == "max":
        return x.masked_fill(~m, float("-inf")).amax(dim=2)
    if reduction == "mean":
        return (x * m).sum(dim=2) / m.sum(dim=2).clamp_min(1)
    raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")


def _stacked(k: int, c_in: int, c_out: int) -> nn.Parameter:
    # Xavier-normal scaled by sqrt(2) (He-like gain for the ReLU that follows).
    std = math.sqrt(2.0) * math.sqrt(2.0 / (c_in + c_out))
    return nn.Parameter(torch.randn(k, c_in, c_out) * std)


class StackedLinear(nn.Module):
    """A separate ``Linear(c_in, c_out)`` per set, applied as one einsum.

    ``x`` (B, K, ..., c_in) -> (B, K, ..., c_out).
    """

    def __init__(self, k: int, c_in: int, c_out: int):
        super().__init__()
        self.weight = _stacked(k, c_in, c_out)
        self.bias = nn.Parameter(torch.empty(k, c_out).uniform_(-1e-4, 1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.einsum("bkic,kcd->bkid", x.reshape(shape[0], shape[1], -1, shape[-1]),
                         self.weight.to(x.dtype))
        y = y + self.bias.to(x.dtype)[None, :, None]
        return y.reshape(*shape[:-1], y.shape[-1])


class DeepSetsLayer(nn.Module):
    r"""DeepSets layer per set: :math:`y_i = \Gamma x_i + \Lambda\,\mathrm{pool}_j x_j + \beta`."""

    def __init__(self, k: int, c_in: int, c_out: int, reduction: str = "max"):
        super().__init__()
        self.elem = StackedLinear(k, c_in, c_out)
        self.pooled = nn.Parameter(_stacked(k, c_in, c_out).detach() * 0.5)
        self.reduction = reduction

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum("bkc,kcd->bkd", masked_pool(x, mask, self.reduction),
                              self.pooled.to(x.dtype))
        return self.elem(x) + pooled[:, :, None]


class SetAttentionLayer(nn.Module):
    r"""Set-Transformer self-attention block ``SAB(X) = MAB(X, X)`` per set, then a projection.

    ``O = Q + softmax(Q K^T / sqrt(h)) V`` (multi-head, keys restricted to real neurons),
    ``O = O + relu(O W_o)``, ``y = O W_p`` (Lee et al. 2019, without LayerNorm, as in
    Deep-Align's ``SAB``).
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, k, n, _ = x.shape
        q, key, v = self.qkv(x).chunk(3, dim=-1)
        split = lambda t: t.reshape(b, k, n, self.heads, -1).transpose(2, 3)  # noqa: E731
        q_h, k_h, v_h = split(q), split(key), split(v)  # (B, K, heads, n, h)
        # written out: for heads this narrow, ATen's fused CPU attention is 3x slower than
        # three batched matmuls, and its masked path adds entry-wide checks
        key_bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        key_bias.masked_fill_(~mask, float("-inf"))  # (K, n): only real neurons are keys
        scores = (q_h @ k_h.mT).mul_(q_h.shape[-1] ** -0.5).add_(key_bias[:, None, None, :])
        o = torch.softmax(scores, dim=-1) @ v_h
        o = q + o.transpose(2, 3).reshape(b, k, n, -1)
        o = o + torch.relu(self.mix(o))
        return self.proj(o)


def make_set_layer(kind: str, k: int, c_in: int, c_out: int, heads: int, reduction: str,
                   hidden: int = None):
    """``kind``: 'ds' (DeepSets) or 'sab' (self-attention with ``hidden`` channels)."""
    if kind == "ds":
        return DeepSetsLayer(k, c_in, c_out, reduction)
    if kind == "sab":
        return SetAttentionLayer(k, c_in, c_out, heads, hidden)
    raise ValueError(f"set_layer must be 'ds' or 'sab', got {kind!r}")
