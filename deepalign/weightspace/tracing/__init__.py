"""Deriving permutation symmetries from a model's ``torch.export`` graph.

The engine (``_engine``) unifies axis variables, the frontend (``_export``) walks the ATen
graph, and every op family has a small rule module under ``_rules`` registered in one table
(``_registry``): supporting a new op is one new rule and its test.
"""
from __future__ import annotations

import torch

from deepalign.weightspace.tracing._emit import emit, live_roots
from deepalign.weightspace.tracing._export import GraphWalk, export_model
from deepalign.weightspace.tracing._registry import RULES, rule


def derive_symmetry(model: torch.nn.Module, example_input) -> tuple:
    """The parts of ``model``'s ``PermutationSpec``: ``(axes_to_perm, sizes, block_groups)``.

    Parameters
    ----------
    model : nn.Module
        Exported in eval mode (its mode and weights are left as they were).
    example_input : Tensor, tuple of Tensor (positional arguments) or dict (keyword arguments)

    Raises
    ------
    ValueError
        When ``example_input`` does not run through the model.
    NotImplementedError
        When the model cannot be exported, or an op without a rule reads permuted features
        (the message names the graph node, the op and the module path).
    """
    walk = GraphWalk(model, export_model(model, example_input))
    parts = emit(walk.engine, walk.tensors, walk.grouped)
    walk.check_opaque(live_roots(walk.engine, walk.engine.perm_names))
    return parts


__all__ = ["RULES", "derive_symmetry", "rule"]
