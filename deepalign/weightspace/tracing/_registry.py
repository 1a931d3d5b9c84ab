"""One registry of op rules: ``@rule("aten::linear")`` binds a function to an op.

A rule gets a ``RuleContext`` for one graph node and returns the node's layout: a tuple of
axes for a tensor (see ``_engine``), a list of layouts for a list or tuple of tensors, or
``None`` for anything else. Rules state how output axes relate to input axes through the
engine (``tie``, ``fix``, ``split_equal``, ``segment``); they never look at names of modules.
"""
from __future__ import annotations

import operator

RULES: dict = {}


def op_key(target) -> str:
    """``"aten::linear"`` for an ATen overload, the ``__name__`` for a Python callable."""
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))


def rule(*names: str):
    """Register the decorated function as the rule of every op in ``names``."""
    def register(fn):
        for name in names:
            if name in RULES:
                raise ValueError(f"two rules for {name}: {RULES[name].__name__} and {fn.__name__}")
            RULES[name] = fn
        return fn
    return register


def lookup(target):
    """The rule for a node target, or ``None``."""
    return RULES.get(op_key(target))
