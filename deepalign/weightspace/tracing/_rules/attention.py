"""Scaled dot-product attention.

``softmax(q k^T / sqrt(d) + mask) v``: the feature axes of q and k are contracted (one perm),
every batch axis (batch, heads) is shared by q, k, v and the output, k and v share the
source-token axis, and the output's feature axis is v's. When q's features are the inner
part of a head split (``(B, T, H*d) -> (B, H, T, d)``), the head axis is the split's outer
part: q/k and v perms then share one permutation of the heads (a block group of kind
``"heads"``), which ``S_H x (S_dk^H x S_dv^H)`` needs.
"""
from __future__ import annotations

from deepalign.weightspace.tracing._registry import rule
from deepalign.weightspace.tracing._rules.linear import _tie_batch


@rule("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
      "aten::_scaled_dot_product_efficient_attention",
      "aten::_scaled_dot_product_flash_attention_for_cpu")
def sdpa(ctx):
    engine = ctx.engine
    q, k, v = (ctx.layout(ctx.arg(i)) for i in range(3))
    if ctx.node.kwargs.get("enable_gqa"):
        ctx.fail("grouped-query attention has no rule yet")
    engine.tie(q[-1], k[-1])
    engine.tie(k[-2], v[-2])
    out_shape = ctx.shape(ctx.node) or tuple(ctx.node.meta["val"][0].shape)
    batch = _tie_batch(ctx, q[:-2], k[:-2], out_shape[:-2])
    batch = _tie_batch(ctx, batch, v[:-2], out_shape[:-2])
    if ctx.arg(5, "is_causal", False):  # the mask follows token positions: pin them
        engine.fix_layout((q[-2], k[-2]))
    mask = ctx.layout(ctx.arg(3, "attn_mask"))
    if mask is not None:  # broadcast against (..., L, S)
        scores = batch + (q[-2], k[-2])
        for i in range(1, len(mask) + 1):
            if engine.axis_size(mask[-i]) == engine.axis_size(scores[-i]) != 1:
                engine.tie(mask[-i], scores[-i])
    ctx.name_heads(q[-1], "qk")
    ctx.name_heads(v[-1], "v")
    out = batch + (q[-2], v[-1])
    if isinstance(ctx.node.meta.get("val"), (tuple, list)):
        return [out] + [engine.fresh(t.shape, fixed=True) if hasattr(t, "shape") else None
                        for t in ctx.node.meta["val"][1:]]
    return out
