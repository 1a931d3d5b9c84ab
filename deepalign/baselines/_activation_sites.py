"""Where activation matching reads each permutation's activations, and a probe that returns them.

The sites follow the ``PermutationSpec``: a perm's units are the inputs of every ``Linear`` or
convolution whose weight reads it on axis 1 (post-nonlinearity features, as Git Re-Basin's
activation matching compares); a perm that no layer reads as a whole input (the q/k
dimensions of attention heads, which meet only each other inside attention) is read at the
outputs of the layers that produce it, one segment of a packed projection each. Forward hooks
capture them, so any module that runs under ``torch.func`` works, attention included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepalign.weightspace._spec import PermutationSpec
from deepalign.weightspace._structure import GroupedAxis, axis_perms

_MIXING = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class ActivationSite:
    """The input (or output) of module ``module``: channels on ``axis`` (negative: from the
    end), split into ``segments`` ``(perm, size)`` in order."""
    module: str
    output: bool
    axis: int
    segments: tuple


def _segments(item, sizes: dict) -> tuple:
    perm = item.perm if isinstance(item, GroupedAxis) else item
    names = (perm,) if isinstance(perm, str) else perm
    return tuple((p, sizes[p]) for p in names)


def activation_sites(model: nn.Module, spec: PermutationSpec) -> list:
    """The sites of every perm of ``spec`` in ``model``, inputs first (see module docstring).

    Raises ``ValueError`` naming a perm that no Linear or convolution reads or produces.
    """
    sizes = spec.check(model)
    inputs, outputs = [], []
    for path, module in model.named_modules():
        key = f"{path}.weight" if path else "weight"
        if not isinstance(module, _MIXING) or key not in spec.axes_to_perm:
            continue
        axis = -1 if isinstance(module, nn.Linear) else 1
        out_item, in_item = spec.axes_to_perm[key][:2]
        in_width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        if in_item is not None and sum(n for _, n in _segments(in_item, sizes)) == in_width:
            inputs.append(ActivationSite(path, False, axis, _segments(in_item, sizes)))
        if out_item is not None:
            outputs.append(ActivationSite(path, True, axis, _segments(out_item, sizes)))
    read = {p for site in inputs for p, _ in site.segments}
    sites = inputs + [s for s in outputs if any(p not in read for p, _ in s.segments)]
    covered = {p for site in sites for p, _ in site.segments}
    missing = [p for p in spec.perm_names if p not in covered]
    if missing:
        raise ValueError(f"no Linear or convolution reads or produces perms {missing}; "
                         "activation matching needs a layer where each perm's units are seen")
    return sites


class ActivationProbe(nn.Module):
    """Runs ``model`` and returns the activations at ``sites`` (one tensor per site and call,
    in call order); its state dict is the model's with the prefix ``model.``."""

    def __init__(self, model: nn.Module, sites: list):
        super().__init__()
        self.model = model
        self.sites = sites
        self.calls: list = []  # the site of each returned tensor, set by every forward
        self.train(model.training)  # leaving eval mode must restore the model's own mode

    def forward(self, x: torch.Tensor) -> tuple:
        captured, calls, handles = [], [], []
        for site in self.sites:
            def hook(module, args, out, site=site):
                captured.append(out if site.output else args[0])
                calls.append(site)
            handles.append(self.model.get_submodule(site.module).register_forward_hook(hook))
        try:
            self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        self.calls = calls
        return tuple(captured)


def same_symmetry(derived: PermutationSpec, spec: PermutationSpec) -> None:
    """Raise ``ValueError`` unless ``spec`` ties exactly the axes ``derived`` ties (names may
    differ): activations read for one perm must belong to it."""
    mapping = {}
    for key, items in derived.axes_to_perm.items():
        given = spec.axes_to_perm.get(key, (None,) * len(items))
        for mine, theirs in zip(items, given):
            ours, yours = axis_perms(mine), axis_perms(theirs)
            if len(ours) != len(yours) or type(mine) is not type(theirs):
                raise ValueError(f"spec does not match the symmetry traced from the model at "
                                 f"{key!r}: {given} vs traced {items}")
            for a, b in zip(ours, yours):
                if mapping.setdefault(a, b) != b:
                    raise ValueError(f"spec does not match the symmetry traced from the model "
                                     f"at {key!r}: traced perm {a!r} is both {mapping[a]!r} "
                                     f"and {b!r}")
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"spec does not match the symmetry traced from the model: it ties "
                         f"permutations the model keeps separate ({mapping})")
