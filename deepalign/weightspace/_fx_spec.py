"""Correctable layers of an ``nn.Module``, traced with ``torch.fx``.

``PermutationSpec.from_module`` derives specs from ``torch.export`` graphs
(``deepalign.weightspace.tracing``). This fx tracer stays for the two consumers that rewrite
a graph of ``call_module`` nodes: REPAIR / BatchNorm reset (``layers``). It handles plain specs only (no attention, no grouped convolutions); for the
networks it handles, its spec has the same ties as ``from_module``'s.

Every tensor flowing through the traced graph gets a label: which hidden permutation acts on
which of its axes (its feature axis), and in blocks of what size after a ``Flatten``. Layers
that mix features (``Linear``, ``Conv``) start a new permutation; per-feature layers
(``BatchNorm``, ``LayerNorm``, depthwise convs), elementwise functions and pooling pass it on;
additions and products tie the permutations of their operands (residual streams share one);
inputs and outputs are never permuted.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from deepalign.weightspace._spec import PermutationSpec

_FIXED = 0  # union-find group of axes that are never permuted (inputs, outputs)

_ELEMENTWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU,
                        nn.Softplus, nn.Hardtanh, nn.ReLU6, nn.Mish, nn.Identity, nn.Dropout,
                        nn.Dropout1d, nn.Dropout2d, nn.Hardswish, nn.SELU, nn.CELU)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                 nn.InstanceNorm2d, nn.InstanceNorm3d)
_ELEMENTWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu,
                          F.selu, F.celu, F.softplus, F.mish, F.hardtanh, F.hardswish,
                          torch.tanh, torch.sigmoid, F.dropout, torch.sin, torch.cos,
                          operator.neg, torch.neg, torch.abs, torch.exp}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid", "sin", "cos", "abs", "neg", "exp", "clone",
                        "contiguous", "float", "double", "to", "detach", "type_as"}
_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                   F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                   F.adaptive_max_pool3d}
_TYING_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                    operator.imul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_TYING_METHODS = {"add", "add_", "sub", "mul", "mul_", "div"}
_RESHAPES = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_REDUCE_METHODS = {"mean", "sum", "amax"}


class _Label(NamedTuple):
    """Permutation on one axis of a tensor: ``group`` on ``axis``, in blocks of ``block``."""
    axis: int
    group: int
    block: int = 1


@dataclass
class TracedPermutations:
    """What ``trace_permutations`` found.

    Attributes
    ----------
    spec : PermutationSpec
    graph_module : torch.fx.GraphModule
        The traced model (shares its parameters with the original module).
    layers : list of (str, str, str or None, int)
        Every ``Linear``, convolution and normalisation call in execution order, as
        ``(node name, module path, perm on its output or None, channel axis)``: where
        per-channel statistics of a hidden layer can be read and corrected (REPAIR).
    """
    spec: PermutationSpec
    graph_module: torch.fx.GraphModule
    layers: list


class _Tracer:
    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.parent = [_FIXED]
        self.sizes = [0]
        self.origin = ["<fixed>"]
        self.labels: dict = {}
        self.axes: dict = {}  # state_dict key -> list of groups per axis (None: unpermuted)
        self.layers: list = []  # nodes of Linear / conv / norm calls, in execution order

    # union-find --------------------------------------------------------------------------
    def new_group(self, size: int, origin: str) -> int:
        self.parent.append(len(self.parent))
        self.sizes.append(size)
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if _FIXED not in (a, b) and self.sizes[a] != self.sizes[b]:
            raise ValueError(f"{where} ties permutations of sizes {self.sizes[a]} "
                             f"({self.origin[a]}) and {self.sizes[b]} ({self.origin[b]})")
        a, b = min(a, b), max(a, b)  # the earlier group (or FIXED) stays the root
        self.parent[b] = a

    # helpers -----------------------------------------------------------------------------
    @staticmethod
    def shape(node) -> tuple | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def label(self, arg) -> _Label | None:
        """Label of a node argument; ``None`` for constants and unpermuted tensors."""
        if not isinstance(arg, torch.fx.Node):
            return None
        lab = self.labels.get(arg)
        if lab is None or self.find(lab.group) == _FIXED:
            return None
        return lab

    def tensor_args(self, node) -> list:
        return [a for a in node.all_input_nodes if self.shape(a) is not None]

    def record(self, module_name: str, entries: dict) -> None:
        """Record ``{param name: groups per axis}``; a module called twice ties its axes."""
        module = self.modules[module_name]
        for pname, groups in entries.items():
            if getattr(module, pname, None) is None:
                continue
            key = f"{module_name}.{pname}" if module_name else pname
            if key in self.axes:
                for old, new in zip(self.axes[key], groups):
                    if (old is None) != (new is None):
                        raise ValueError(f"{key!r} is used with different permuted axes")
                    if old is not None:
                        self.union(old, new, f"second call of {module_name!r}")
            else:
                self.axes[key] = list(groups)

    def unsupported(self, node, why: str):
        raise NotImplementedError(
            f"cannot derive permutations through node {node.name!r} ({node.format_node()}): "
            f"{why}. Write the PermutationSpec by hand for this model.")

    # node handlers -----------------------------------------------------------------------
    def visit(self, node) -> _Label | None:
        if node.op == "placeholder" or node.op == "get_attr":
            return None
        if node.op == "output":
            for arg in self.tensor_args(node):
                lab = self.label(arg)
                if lab is not None:
                    self.union(lab.group, _FIXED, "the model output")
            return None
        inputs = [self.label(a) for a in self.tensor_args(node)]
        if not any(lab is not None for lab in inputs):
            if node.op == "call_module":  # still records the layer's parameters
                return self.visit_module(node, None)
            return None
        if node.op == "call_module":
            return self.visit_module(node, inputs[0])
        target = node.target
        if node.op == "call_function":
            if target in _ELEMENTWISE_FUNCTIONS or target in _POOL_FUNCTIONS:
                return self.passthrough(node, inputs, pool=target in _POOL_FUNCTIONS)
            if target in _TYING_FUNCTIONS:
                return self.tie(node)
            if target in _RESHAPES:
                return self.reshape(node, inputs[0])
            if target is torch.mean:
                return self.reduce(node, inputs[0])
        if node.op == "call_method":
            if target in _ELEMENTWISE_METHODS:
                return self.passthrough(node, inputs, pool=False)
            if target in _TYING_METHODS:
                return self.tie(node)
            if target in _RESHAPE_METHODS:
                return self.reshape(node, inputs[0])
            if target in _REDUCE_METHODS:
                return self.reduce(node, inputs[0])
            if target in ("size", "dim"):
                return None
        if node.op == "call_function" and target is getattr and node.args[1] in ("shape",):
            return None
        return self.unsupported(node, "this operation is not supported on permuted features")

    def passthrough(self, node, inputs, pool: bool) -> _Label:
        lab = inputs[0]
        if lab is None or len([x for x in inputs if x is not None]) > 1:
            self.unsupported(node, "expected one permuted tensor argument first")
        if pool and (lab.axis != 1 or lab.block != 1):
            self.unsupported(node, "pooling needs the permuted channels on axis 1")
        return lab

    def tie(self, node) -> _Label:
        args = self.tensor_args(node)
        shapes = {self.shape(a) for a in args if len(self.shape(a)) > 0}
        if len(shapes) > 1:
            self.unsupported(node, f"operands of different shapes {sorted(shapes)}")
        labels = [self.label(a) for a in args if len(self.shape(a)) > 0]
        first = next(lab for lab in labels if lab is not None)
        for lab in labels:
            if lab is None:  # an unpermuted operand pins the other to the identity
                self.union(first.group, _FIXED, f"node {node.name!r}")
            elif (lab.axis, lab.block) != (first.axis, first.block):
                self.unsupported(node, "operands are permuted on different axes")
            else:
                self.union(first.group, lab.group, f"node {node.name!r}")
        return first

    def reshape(self, node, lab: _Label) -> _Label:
        src, dst = self.shape(node.all_input_nodes[0]), self.shape(node)
        if src == dst:
            return lab
        a = lab.axis
        if lab.block == 1 and dst == src[:a] + (math.prod(src[a:]),):
            return _Label(a, lab.group, math.prod(src[a + 1:]))
        return self.unsupported(node, f"reshape {src} -> {dst} is not a flatten of the "
                                      f"features (axis {a}) with everything after them")

    def reduce(self, node, lab: _Label) -> _Label:
        src = self.shape(node.all_input_nodes[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            self.unsupported(node, "reduction over all axes")
        dims = {d % len(src) for d in ((dims,) if isinstance(dims, int) else dims)}
        if lab.axis in dims or lab.block != 1:
            self.unsupported(node, "reduction over the permuted axis")
        keep = node.kwargs.get("keepdim", len(node.args) > 2 and node.args[2])
        return lab if keep else lab._replace(axis=lab.axis - sum(d < lab.axis for d in dims))

    def visit_module(self, node, lab: _Label | None) -> _Label | None:
        name, module = node.target, self.modules[node.target]
        rank = len(self.shape(node.all_input_nodes[0]))
        group_in = None if lab is None else lab.group
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm) + _NORM_MODULES):
            self.layers.append(node)
        if isinstance(module, nn.Linear):
            if lab is not None and lab.axis != rank - 1:
                self.unsupported(node, "Linear on a tensor permuted on another axis than last")
            out = self.new_group(module.out_features, name)
            self.record(name, {"weight": (out, group_in), "bias": (out,)})
            return _Label(rank - 1, out)
        if isinstance(module, nn.modules.conv._ConvNd):
            if lab is not None and (lab.axis != 1 or lab.block != 1):
                self.unsupported(node, "convolution input must be permuted on channels (axis 1)")
            spatial = (None,) * (module.weight.dim() - 2)
            if module.groups == 1:
                out = self.new_group(module.out_channels, name)
                self.record(name, {"weight": (out, group_in, *spatial), "bias": (out,)})
                return _Label(1, out)
            if module.groups == module.in_channels == module.out_channels:
                self.record(name, {"weight": (group_in, None, *spatial), "bias": (group_in,)})
                return lab
            self.unsupported(node, "grouped convolutions are not supported")
        if isinstance(module, _NORM_MODULES) or (
                isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1):
            axis = rank - 1 if isinstance(module, nn.LayerNorm) else 1
            if lab is not None and (lab.axis != axis or lab.block != 1):
                self.unsupported(node, f"normalisation expects the permuted axis {axis}")
            self.record(name, {"weight": (group_in,), "bias": (group_in,),
                               "running_mean": (group_in,), "running_var": (group_in,),
                               "num_batches_tracked": ()})
            return lab
        if isinstance(module, nn.Flatten):
            return None if lab is None else self.reshape(node, lab)
        if isinstance(module, _ELEMENTWISE_MODULES + _POOL_MODULES) and not any(
                True for _ in module.parameters()):
            if lab is None:
                return None
            return self.passthrough(node, [lab], pool=isinstance(module, _POOL_MODULES))
        if lab is None and not any(True for _ in module.parameters(recurse=True)):
            return None
        return self.unsupported(node, f"module type {type(module).__name__} is not supported")


def trace_permutations(model: nn.Module, example_input) -> TracedPermutations:
    """Trace ``model`` with ``torch.fx``: its plain ``PermutationSpec`` and correctable
    layers (for REPAIR; specs of any model come from ``PermutationSpec.from_module``).

    Supported: chains of ``Linear``, ``Conv1d/2d/3d`` (ordinary and depthwise),
    ``BatchNorm*``/``InstanceNorm*``/1-D ``LayerNorm`` (running statistics included),
    elementwise activations and dropout, pooling, ``Flatten``/``view``/``reshape`` from
    channels to features (each channel owns its spatial block of input columns), means over
    spatial axes, and residual additions/products (which tie permutations). Anything else
    touching permuted features raises ``NotImplementedError`` naming the graph node.

    Parameters
    ----------
    model : nn.Module
        Not modified (shape propagation runs in eval mode without gradients).
    example_input : Tensor or tuple of Tensor
        Arguments of ``model.forward``, used for shape propagation.

    Returns
    -------
    TracedPermutations
        The spec (perm names ``P_<module>`` after the layer that creates each permutation,
        entries in execution order), the traced graph and the correctable layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    gm = torch.fx.symbolic_trace(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as exc:
        raise ValueError(f"example_input does not run through the model: {exc}") from exc
    finally:
        model.train(was_training)

    tracer = _Tracer(gm)
    for node in gm.graph.nodes:
        tracer.labels[node] = tracer.visit(node)

    names, sizes = {}, {}
    for g in range(1, len(tracer.parent)):
        root = tracer.find(g)
        if root != _FIXED and root not in names:
            names[root] = f"P_{tracer.origin[root]}"
            sizes[names[root]] = tracer.sizes[root]

    def name_of(g):
        return None if g is None else names.get(tracer.find(g))

    axes_to_perm = {key: tuple(name_of(g) for g in groups) for key, groups in tracer.axes.items()}
    used = {p for axes in axes_to_perm.values() for p in axes if p is not None}
    spec = PermutationSpec(axes_to_perm, {p: n for p, n in sizes.items() if p in used})
    spec.check(model)

    layers = []
    for node in tracer.layers:
        lab = tracer.label(node)
        layers.append((node.name, node.target, None if lab is None else name_of(lab.group),
                       len(tracer.shape(node)) - 1 if lab is None else lab.axis))
    return TracedPermutations(spec, gm, layers)
