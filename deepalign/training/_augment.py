r"""Weight-space augmentations for labelled pairs ``(v, t # aug(v))`` (Navon et al. 2024, §3.1).

Applied in this order, independently per network of a batch, all drawn from one
``torch.Generator`` (deterministic given its seed):

1. Gaussian noise with std ``noise * std(tensor)`` per tensor;
2. dropout: each weight and bias zeroed with probability ``dropout``. Survivors are *not*
   rescaled by ``1 / (1 - p)`` (the official code does, which shifts every weight's scale);
3. positive rescaling (ReLU networks only): hidden neuron ``i`` of layer ``m`` gets a factor
   ``a_i ~ U(1 - pos_scale, 1 + pos_scale)`` on its incoming weights and bias and ``1 / a_i``
   on its outgoing weights: the function is unchanged, the weights are not;
4. quantile dropout: ``q ~ U(0, quantile_dropout)``, every weight and bias whose magnitude
   is below the ``q``-quantile of the network's magnitudes is zeroed.

:func:`mix_inputs` is of another kind: it moves the input space of a *pair* (one draw shared by
both networks), which leaves the hidden permutation aligning them unchanged. The aligner sees
mixed networks, the losses the originals, so it cannot key on what the training data's
inputs look like (a Fashion-MNIST pixel layout) and must compare neurons across networks.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    """Strengths of the four augmentations (0 disables one). Defaults: the paper's MLP setting."""

    noise: float = 0.01
    dropout: float = 0.05
    pos_scale: float = 0.1
    quantile_dropout: float = 0.1

    def __post_init__(self):
        for name in ("noise", "dropout", "pos_scale", "quantile_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")


def augment(sd: dict, layout, aug: Augmentation, generator: torch.Generator) -> dict:
    """Augmented copy of a batch of state_dicts.

    Parameters
    ----------
    sd : dict of str to Tensor, each (B, *shape)
        Networks of the layout's architecture (entries outside the layer chain are copied).
    layout : deepalign.nn.WeightLayout or list of str
        The layer chain (DWS aligner), or the entries to augment for an architecture without
        one (graph aligner); positive rescaling (``pos_scale``) needs the chain.
    aug : Augmentation
    generator : torch.Generator

    Returns
    -------
    dict of str to Tensor, each (B, *shape)
    """
    chain = hasattr(layout, "slots")
    keys = ([k for s in layout.slots for k in (s.weight, s.bias) if k is not None] if chain
            else list(layout))
    if aug.pos_scale and not chain:
        raise ValueError("pos_scale rescales neurons along a layer chain: set it to 0 for "
                         "networks without one (the graph aligner)")
    out = dict(sd)
    for k in keys:
        x = sd[k]
        if aug.noise:
            # population std: a one-element tensor (an INR's single output bias) gets none
            std = x.reshape(x.shape[0], -1).std(dim=1, correction=0)
            std = std.reshape(-1, *[1] * (x.dim() - 1))
            x = x + aug.noise * std * _draw(torch.randn, x.shape, x, generator)
        if aug.dropout:
            x = x * (_draw(torch.rand, x.shape, x, generator) >= aug.dropout)
        out[k] = x
    if aug.pos_scale:
        out = _rescale_neurons(out, layout, aug.pos_scale, generator)
    if aug.quantile_dropout:
        out = _quantile_dropout(out, keys, aug.quantile_dropout, generator)
    return out


#: the input mixings of :func:`mix_inputs`
INPUT_MIXINGS = ("none", "permutation", "signed-permutation")


def mix_inputs(sds: list, layout, kind: str, generator: torch.Generator) -> list:
    """The same random transform of the input space applied to item ``b`` of every batch.

    ``W_1 -> W_1 Q^T`` on the first layer's input axis, with ``Q`` a permutation
    (``'permutation'``) or a permutation with random signs (``'signed-permutation'``), one per
    item: a network ``v`` on inputs ``x`` computes what the mixed one does on ``Q x``, and for
    two networks mixed alike the aligning hidden permutation is the same.

    Parameters
    ----------
    sds : list of dict of str to Tensor, each (B, *shape)
    layout : deepalign.nn.WeightLayout
    kind : {'none', 'permutation', 'signed-permutation'}
    generator : torch.Generator

    Returns
    -------
    list of dict (new dicts; only the first weight is replaced)
    """
    if kind not in INPUT_MIXINGS:
        raise ValueError(f"input mixing must be one of {INPUT_MIXINGS}, got {kind!r}")
    if kind == "none":
        return list(sds)
    if not hasattr(layout, "slots"):
        raise ValueError("input mixing needs a layer chain (the DWS aligner)")
    slot = layout.slots[0]
    first = sds[0][slot.weight]
    b = first.shape[0]
    order = torch.rand(b, slot.d_in, generator=generator).argsort(dim=1).to(first.device)
    signs = None
    if kind == "signed-permutation":
        signs = 2 * (_draw(torch.rand, (b, slot.d_in), first, generator) < 0.5) - 1
    out = []
    for sd in sds:
        w = sd[slot.weight]
        view = w.reshape(b, slot.d_out, slot.d_in, -1)
        mixed = view.gather(2, order[:, None, :, None].expand_as(view))
        if signs is not None:
            mixed = mixed * signs[:, None, :, None].to(w.dtype)
        out.append({**sd, slot.weight: mixed.reshape(w.shape)})
    return out


def _draw(fn, shape, like: torch.Tensor, generator) -> torch.Tensor:
    """``fn(shape)`` from the (CPU) generator, as ``like``'s dtype and device."""
    return fn(shape, generator=generator, dtype=like.dtype).to(like.device)


def _rescale_neurons(sd: dict, layout, strength: float, generator) -> dict:
    out = dict(sd)
    for m, slot in enumerate(layout.slots[:-1]):
        w = out[slot.weight]
        b = w.shape[0]
        a = 1 + strength * (2 * _draw(torch.rand, (b, slot.d_out), w, generator) - 1)
        out[slot.weight] = (w.reshape(b, slot.d_out, -1) * a[:, :, None]).reshape(w.shape)
        if slot.bias is not None:
            out[slot.bias] = out[slot.bias] * a
        nxt = layout.slots[m + 1]
        w2 = out[nxt.weight]
        # the next layer's input axis may be blocked (C * s after a flatten): (B, out, C, rest)
        view = w2.reshape(b, nxt.d_out, nxt.d_in, -1)
        out[nxt.weight] = (view / a[:, None, :, None]).reshape(w2.shape)
    return out


def _quantile_dropout(sd: dict, keys: list, q_max: float, generator) -> dict:
    first = sd[keys[0]]
    b = first.shape[0]
    mags = torch.cat([sd[k].reshape(b, -1).abs() for k in keys], dim=1)
    q = q_max * _draw(torch.rand, (b,), first, generator)
    ranked = mags.sort(dim=1).values
    index = (q * (ranked.shape[1] - 1)).long()
    threshold = ranked.gather(1, index[:, None])[:, 0]
    out = dict(sd)
    for k in keys:
        x = sd[k]
        out[k] = x * (x.abs() >= threshold.reshape(-1, *[1] * (x.dim() - 1)))
    return out
