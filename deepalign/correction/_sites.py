"""Where a merged network's statistics are corrected: one site per permuted hidden layer output.

The sites are read off the model's ``PermutationSpec`` (``PermutationSpec.from_module``, which
reads attention) and one forward pass of the real module, so any model that runs eagerly
works: no graph is traced or rewritten.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from deepalign.weightspace._spec import PermutationSpec

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm)
_LAYERS = (nn.Linear, nn.modules.conv._ConvNd) + _NORMS


@dataclass(frozen=True)
class CorrectionSite:
    """A hidden layer output whose channels get ``y <- scale * y + shift`` (REPAIR).

    Attributes
    ----------
    module : str
        Module path of the layer that computes it; its weight and bias absorb the correction.
    axis : int
        Channel axis of the activation (1 for convolutions and BatchNorm, -1 for ``Linear``
        and ``LayerNorm``).
    perm : str
        The permutation acting on those channels.
    """
    module: str
    axis: int
    perm: str


@dataclass
class CorrectionPlan:
    """What one probing forward pass found (see ``plan_corrections``).

    Attributes
    ----------
    sites : list of CorrectionSite
        The REPAIR sites, one per call, in execution order.
    batchnorms : list of str
        Module path of every call of a BatchNorm that tracks running statistics, in order.
    activation_size : int
        The largest number of elements per sample of any intermediate tensor.
    """
    sites: list
    batchnorms: list
    activation_size: int


def _output_perm(spec: PermutationSpec, path: str, module: nn.Module):
    """The perm on the layer's output channels (weight axis 0), or None."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        return None  # a transposed convolution's weight axis 0 is its input
    for name in ("weight", "running_mean"):  # a norm without affine parameters has stats
        key = f"{path}.{name}" if path else name
        if key in spec.axes_to_perm:
            item = spec.axes_to_perm[key][0]
            return item if isinstance(item, str) else None  # packed/grouped axes: not a site
    return None


class _Consumers(TorchDispatchMode):
    """Records, for every ATen op, which tracked tensors it reads and which module runs it.

    Dispatch-level ops are the real computations (shape queries never dispatch), and a
    tensor keeps its Python identity down to the dispatcher, so ``id`` names a layer output
    for as long as the output is kept alive (``tracked`` and ``data`` hold them). It also
    measures the largest tensor computed from the data (weights and their transposes are not
    activations).
    """

    def __init__(self, stack: list, tracked: dict, sample: torch.Tensor):
        super().__init__()
        self.stack, self.tracked = stack, tracked
        self.data = {id(sample): sample}  # tensors computed from the input, kept alive
        self.readers: dict = {}  # id(output) -> set of "is the reading module a norm"
        self.largest = 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        in_norm = bool(self.stack) and isinstance(self.stack[-1], _NORMS)
        for leaf in leaves:
            if id(leaf) in self.tracked:
                self.readers.setdefault(id(leaf), set()).add(in_norm)
        out = func(*args, **kwargs)
        if any(id(leaf) in self.data for leaf in leaves):
            for leaf in tree_flatten(out)[0]:
                if isinstance(leaf, torch.Tensor):
                    self.data[id(leaf)] = leaf
                    self.largest = max(self.largest, leaf.numel())
        return out


def plan_corrections(model: nn.Module, x: torch.Tensor) -> CorrectionPlan:
    """The REPAIR sites and BatchNorm calls of ``model``, from its spec and a forward pass.

    Every ``Linear``, convolution or normalisation call whose output channels (weight axis 0;
    a norm's weight) carry a perm of the spec (hidden channels: not inputs or outputs) is a
    site, in execution order, except a layer whose output only feeds normalisation layers:
    those normalise it again, so the site is their output (``conv -> BatchNorm -> ReLU`` is
    corrected after the BatchNorm, ``Linear -> LayerNorm`` after the LayerNorm). Residual
    branches are corrected each on its own, before the addition, as Jordan et al. (ICLR 2023)
    do for ResNets. The sites follow the ``PermutationSpec``: no per-architecture code.

    Who reads a layer's output is observed, not traced: during one eval-mode pass on two
    samples every ATen op records which layer outputs (by tensor identity) it reads and
    whether the innermost running module is a normalisation layer; an output that is also
    part of the model's result counts as read by a non-norm.

    Raises ``ValueError`` (message starting "example_input does not run") when ``x`` does not
    fit the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    sample = x[:2]
    spec = PermutationSpec.from_module(model, sample)
    perms = {path: _output_perm(spec, path, m) for path, m in model.named_modules()
             if isinstance(m, _LAYERS)}
    stack, tracked, calls = [], {}, []  # tracked: id -> output tensor (kept alive)
    mode = _Consumers(stack, tracked, sample)

    def enter(module, args):
        stack.append(module)

    def leave(module, args, out, path=None):
        stack.pop()
        if path is not None:
            calls.append((path, out))
            if isinstance(out, torch.Tensor):
                tracked[id(out)] = out

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(
            lambda m, a, o, path=path if path in perms else None: leave(m, a, o, path)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mode:
            result = model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    for leaf in tree_flatten(result)[0]:
        if isinstance(leaf, torch.Tensor) and id(leaf) in tracked:
            mode.readers.setdefault(id(leaf), set()).add(False)

    sites, batchnorms = [], []
    for path, out in calls:
        module = model.get_submodule(path)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            batchnorms.append(path)
        readers = mode.readers.get(id(out), set())
        if perms[path] is None or False not in readers:
            continue  # unpermuted, or read only by norms (or by nothing)
        axis = 1 if isinstance(module, (nn.modules.conv._ConvNd,
                                        nn.modules.batchnorm._NormBase)) else -1
        sites.append(CorrectionSite(path, axis, perms[path]))
    per_sample = math.ceil(mode.largest / max(len(sample), 1))
    return CorrectionPlan(sites, batchnorms, per_sample)


def correction_sites(model: nn.Module, x: torch.Tensor) -> list:
    """The REPAIR sites of ``model`` run on ``x`` (see ``plan_corrections``), in order."""
    return plan_corrections(model, x).sites
