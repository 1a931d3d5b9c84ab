"""The ``torch.export`` frontend: export the model, walk its ATen graph, apply the rules.

``torch.export.export(..., strict=False)`` traces what ``torch.fx.symbolic_trace`` cannot
(Hugging Face models, data-independent Python control flow) and lowers every module to ATen
ops, so one rule per op family covers ``nn.MultiheadAttention``, ``Conv1D`` and hand-written
attention alike. Placeholders map to state-dict names through the graph signature.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx
from torch.utils import _pytree as pytree

from deepalign.weightspace.tracing import _rules  # noqa: F401  (registers every rule)
from deepalign.weightspace.tracing._context import RuleContext, describe
from deepalign.weightspace.tracing._engine import AxisConflict, AxisEngine
from deepalign.weightspace.tracing._registry import lookup


def _arguments(example_input) -> tuple:
    if isinstance(example_input, tuple):
        return example_input, {}
    if isinstance(example_input, Mapping):
        return (), dict(example_input)
    return (example_input,), {}


def export_model(model: torch.nn.Module, example_input):
    """``torch.export`` of ``model`` in eval mode; the model's mode is restored.

    A wrong ``example_input`` is a ``ValueError``; a model ``torch.export`` cannot trace is a
    ``NotImplementedError`` (never an error from inside the exporter).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    args, kwargs = _arguments(example_input)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                model(*args, **kwargs)
            except Exception as exc:
                raise ValueError(f"example_input does not run through "
                                 f"{type(model).__name__}: {exc}") from exc
        try:
            return torch.export.export(model, args, kwargs, strict=False)
        except Exception as exc:
            raise NotImplementedError(
                f"torch.export cannot trace {type(model).__name__} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); write the PermutationSpec "
                "by hand for this model") from exc
    finally:
        model.train(was_training)


def _layout_of_value(engine: AxisEngine, value, fixed: bool):
    """Fresh layouts mirroring a node's ``meta["val"]`` (tensors, lists of tensors)."""
    if isinstance(value, torch.Tensor):
        return engine.fresh(value.shape, fixed=fixed)
    if isinstance(value, (list, tuple)):
        return [_layout_of_value(engine, v, fixed) for v in value]
    return None


def _flat_layouts(value) -> list:
    if isinstance(value, list):
        return [lay for v in value for lay in _flat_layouts(v)]
    return [] if value is None else [value]


class GraphWalk:
    """The engine state after walking one exported graph.

    Attributes
    ----------
    engine : AxisEngine
    tensors : dict of str to layout
        Every state-dict entry (tied names share one layout), in execution order.
    opaque : list of (node, variables, reason)
        Ops without a rule, or whose rule found axes it cannot relate: allowed only if none
        of the variables they read is permuted.
    """

    def __init__(self, model: torch.nn.Module, ep):
        self.engine = AxisEngine()
        self.opaque: list = []
        self.grouped: dict = {}  # weight variable -> input channel variable (grouped convs)
        sig = ep.graph_signature
        named = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        state = model.state_dict(keep_vars=True)
        by_identity = {}
        for key, tensor in state.items():
            by_identity.setdefault(id(tensor), []).append(key)
        env, holder, order = {}, {}, {}
        for node in ep.graph.nodes:
            order[node] = len(order)
            if node.op == "placeholder":
                key = named.get(node.name)
                keys = by_identity.get(id(state[key]), []) if key in state else []
                env[node] = _layout_of_value(self.engine, node.meta.get("val"),
                                             fixed=not keys)
                holder.update({k: node for k in keys})
            elif node.op == "call_function":
                env[node] = self.visit(node, env)
            elif node.op == "output":
                for arg in pytree.tree_leaves(node.args):
                    for lay in _flat_layouts(env.get(arg) if isinstance(arg, torch.fx.Node)
                                             else None):
                        self.engine.fix_layout(lay)
            else:
                raise NotImplementedError(f"cannot derive permutations through {describe(node)}"
                                          f": {node.op} nodes are not supported")
        for node in set(holder.values()):
            if not node.users:  # never read: permuting it would be harmless, and pointless
                self.engine.fix_layout(env[node])
        missing = [k for k in state if k not in holder]
        if missing:
            raise NotImplementedError(f"state-dict entries {missing[:4]} do not appear in the "
                                      "exported graph")
        # execution order: the first node reading a tensor (unread buffers such as
        # num_batches_tracked go after their module's other tensors), then state-dict order
        index = {k: i for i, k in enumerate(state)}

        used = {k: min(order[u] for u in holder[k].users) for k in state if holder[k].users}

        def position(key):
            if key in used:
                return used[key], index[key]
            module = key.rpartition(".")[0]
            siblings = [p for k, p in used.items() if k.rpartition(".")[0] == module]
            return max(siblings, default=len(order)), index[key]

        self.tensors = {k: env[holder[k]] for k in sorted(state, key=position)}

    def visit(self, node, env):
        ctx = RuleContext(node, self.engine, env)
        fn = lookup(node.target)
        try:
            if fn is None:
                raise AxisConflict("no rule for this op")
            out = fn(ctx)
        except AxisConflict as exc:
            # the op stays opaque: its outputs are never permuted, which is exact as long as
            # it reads no permuted axis either (checked once all ties are known)
            reads = [v for a in ctx.tensor_args() for lay in _flat_layouts(env.get(a))
                     for v in self.engine.variables(lay)]
            self.opaque.append((node, reads, str(exc)))
            return _layout_of_value(self.engine, node.meta.get("val"), fixed=True)
        for lay in _flat_layouts(out):
            for v in self.engine.orphans(lay):  # per-block perms without their block index
                self.engine.fix(v)
        self.grouped.update(ctx.grouped)
        return out

    def check_opaque(self, live: set) -> None:
        """Raise for the first op without a rule that reads an axis a perm acts on
        (``live``: the variable classes of the emitted perms)."""
        for node, variables, why in self.opaque:
            if any(self.engine.find(v) in live for v in variables):
                raise NotImplementedError(
                    f"cannot derive permutations through {describe(node)}: {why}, and it "
                    "reads permuted features. Write the PermutationSpec by hand for this model "
                    "(or add a rule in deepalign/weightspace/tracing/_rules/).")
