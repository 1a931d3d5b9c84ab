"""What a rule sees of one graph node."""
from __future__ import annotations

import torch
import torch.fx

from deepalign.weightspace.tracing._engine import AxisConflict, AxisEngine


def module_path(node) -> tuple:
    """``(path, type name)`` of the innermost module a node was traced in (``("", "")``)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, kind = list(stack.values())[-1]
    return path, getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]


def describe(node) -> str:
    """Node, op and module path, for error messages."""
    path, kind = module_path(node)
    where = f"module {path!r} ({kind})" if path else "the top-level module"
    return f"node {node.name!r} (op {node.target}) in {where}"


class RuleContext:
    """One node, the engine and the layouts computed so far.

    Attributes
    ----------
    node : torch.fx.Node
    engine : AxisEngine
    grouped : dict of int to int
        Set by the convolution rule: the variable of a grouped weight's input axis and the
        channel variable it reads (it becomes a ``GroupedAxis``).
    """

    def __init__(self, node: torch.fx.Node, engine: AxisEngine, env: dict):
        self.node, self.engine, self._env = node, engine, env
        self.grouped: dict = {}

    @property
    def module(self) -> str:
        return module_path(self.node)[0]

    def name_heads(self, axis, suffix: str) -> bool:
        """Name the split variables whose inner part is in ``axis`` ``<module>.<suffix>`` and
        their head blocks after this module; return whether ``axis`` held any."""
        found = False
        for tag, var in axis:
            if tag != "i":
                continue
            found = True
            root = self.engine.find(var)
            self.engine.mark(self.engine.split[root][0], "heads", self.module)
            if self.module and not self.engine.hint[root]:
                self.engine.hint[root] = f"{self.module}.{suffix}"
        return found

    def arg(self, i: int, name: str | None = None, default=None):
        """Positional argument ``i`` or keyword ``name``."""
        if len(self.node.args) > i:
            return self.node.args[i]
        return self.node.kwargs.get(name, default) if name else default

    def layout(self, value):
        """Layout of an argument (``None`` for constants and non-tensors)."""
        if isinstance(value, torch.fx.Node):
            return self._env.get(value)
        return None

    @staticmethod
    def shape(value) -> tuple | None:
        meta = value.meta.get("val") if isinstance(value, torch.fx.Node) else None
        return tuple(int(n) for n in meta.shape) if isinstance(meta, torch.Tensor) else None

    def out_shape(self) -> tuple | None:
        return self.shape(self.node)

    def tensor_args(self) -> list:
        return [a for a in self.node.all_input_nodes if self.shape(a) is not None]

    def fail(self, why: str):
        """Give up on this node: it becomes opaque (outputs never permuted), an error naming
        the node and ``why`` only if it reads an axis that a perm acts on."""
        raise AxisConflict(why)
