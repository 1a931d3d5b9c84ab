"""Embedding lookups: the table's rows are indexed by token ids, its columns are features.

``embedding(weight, ids)[..., j] = weight[ids, j]``: permuting the columns permutes the
output's last axis; the rows (the vocabulary) are addressed by value and never permuted.
"""
from __future__ import annotations

from deepalign.weightspace.tracing._registry import rule


@rule("aten::embedding")
def embedding(ctx):
    weight, ids = ctx.layout(ctx.arg(0)), ctx.layout(ctx.arg(1))
    ctx.engine.fix_layout(weight[:1])
    return tuple(ids) + (weight[1],)
