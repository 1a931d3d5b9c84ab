"""Derived specs of attention: nn.MultiheadAttention, Transformer layers, a ViT, hand-written."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepalign.weightspace import PermutationSpec, check_equivalent
from structured_nets import ViT as StructuredViT, vit_spec
from trace_helpers import (assert_exact_symmetry, assert_same_up_to_names, mix_across_blocks,
                           random_weights)


class SelfAttention(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(12, 3, batch_first=batch_first)

    def forward(self, x):
        x = x if self.batch_first else x.transpose(0, 1)
        y = self.attn(x, x, x, need_weights=False)[0]
        return y if self.batch_first else y.transpose(0, 1)


class WeightedAttention(nn.Module):
    """need_weights=True (no sdpa: bmm, softmax, weights averaged over heads), a causal mask,
    and the attention weights used downstream."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(12, 3, batch_first=batch_first)
        self.fc = nn.Linear(5, 1)

    def forward(self, x):
        mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
        x = x if self.attn.batch_first else x.transpose(0, 1)
        y, weights = self.attn(x, x, x, attn_mask=mask)
        y = y if self.attn.batch_first else y.transpose(0, 1)
        return y + self.fc(weights)


class CrossAttention(nn.Module):
    """Separate q/k/v projections (kdim, vdim != embed_dim), keys and values from hidden
    layers of their own, so their inputs carry perms too."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.keys, self.values = nn.Linear(12, 8), nn.Linear(12, 6)
        self.attn = nn.MultiheadAttention(12, 3, batch_first=batch_first, kdim=8, vdim=6)
        self.out = nn.Linear(12, 4)

    def forward(self, x):
        k, v = torch.relu(self.keys(x)), torch.tanh(self.values(x))
        if not self.batch_first:
            x, k, v = x.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        y = self.attn(x, k, v, need_weights=False)[0]
        return self.out(y if self.batch_first else y.transpose(0, 1))


class Encoder(nn.Module):
    def __init__(self, norm_first):
        super().__init__()
        self.embed = nn.Linear(5, 12)
        self.layer = nn.TransformerEncoderLayer(12, 3, 20, dropout=0.0, batch_first=True,
                                                norm_first=norm_first)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)))


class Decoder(nn.Module):
    def __init__(self, norm_first):
        super().__init__()
        self.embed, self.memory = nn.Linear(5, 12), nn.Linear(5, 12)
        self.layer = nn.TransformerDecoderLayer(12, 3, 20, dropout=0.0, batch_first=True,
                                                norm_first=norm_first, activation="gelu")
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        memory = self.memory(x[:, :3])
        return self.head(self.layer(self.embed(x), memory))


class ViT(nn.Module):
    """Conv patches, an expanded class token, a learned positional embedding."""

    def __init__(self, width=16, heads=4, depth=2, norm_first=True):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, 5, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                           batch_first=True, norm_first=norm_first,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


class HandAttention(nn.Module):
    """Packed qkv, chunk/split, view/reshape/transpose/permute heads, sdpa or softmax."""

    def __init__(self, width=12, heads=3, eager=False, split=False):
        super().__init__()
        self.heads, self.eager, self.split = heads, eager, split
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 24), nn.GELU(), nn.Linear(24, width))

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm(x)
        qkv = self.qkv(h)
        q, k, v = qkv.split(d, dim=-1) if self.split else qkv.chunk(3, dim=-1)
        q = q.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = k.reshape(b, t, self.heads, -1).permute(0, 2, 1, 3)
        v = v.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        if self.eager:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            y = att.softmax(dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(x)


class SeparateHeads(nn.Module):
    """q/k head dim 4, v head dim 6: the two perms of one head group differ in size."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(10, 8), nn.Linear(10, 8), nn.Linear(10, 12)
        self.o = nn.Linear(12, 10)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 2, 4).transpose(1, 2)
        k = self.k(x).view(b, t, 2, 4).transpose(1, 2)
        v = self.v(x).view(b, t, 2, 6).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).flatten(2))


class NanoGPTAttention(nn.Module):
    """nanoGPT's causal self-attention: ``@`` with ``transpose(-2, -1)``, a ``tril`` buffer
    through ``masked_fill``, ``contiguous().view``."""

    def __init__(self, width=12, heads=3, context=8):
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(width)
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.register_buffer("bias", torch.tril(torch.ones(context, context))
                             .view(1, 1, context, context))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.c_attn(self.ln(x)).split(c, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf")).softmax(dim=-1)
        return x + self.c_proj((att @ v).transpose(1, 2).contiguous().view(b, t, c))


class EinsumAttention(nn.Module):
    """Separate projections, heads kept in (B, T, H, d) and contracted by ``einsum``."""

    def __init__(self, width=12, heads=3):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.o = nn.Linear(width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1) for f in (self.q, self.k, self.v))
        att = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        return x + self.o(torch.einsum("...hqk,...khd->...qhd", att, v).reshape(b, t, c))


CASES = {
    "mha": (lambda: SelfAttention(True), (2, 5, 12)),
    "mha_seq_first": (lambda: SelfAttention(False), (2, 5, 12)),
    "mha_need_weights_mask": (lambda: WeightedAttention(True), (2, 5, 12)),
    "mha_need_weights_mask_seq_first": (lambda: WeightedAttention(False), (2, 5, 12)),
    "mha_kdim_vdim": (lambda: CrossAttention(True), (2, 5, 12)),
    "mha_kdim_vdim_seq_first": (lambda: CrossAttention(False), (2, 5, 12)),
    "encoder_post_norm": (lambda: Encoder(False), (2, 5, 5)),
    "encoder_pre_norm": (lambda: Encoder(True), (2, 5, 5)),
    "decoder_post_norm": (lambda: Decoder(False), (2, 5, 5)),
    "decoder_pre_norm": (lambda: Decoder(True), (2, 5, 5)),
    "vit_pre_norm": (lambda: ViT(norm_first=True), (2, 3, 8, 8)),
    "vit_post_norm": (lambda: ViT(norm_first=False), (2, 3, 8, 8)),
    "hand_sdpa_chunk": (lambda: HandAttention(), (2, 5, 12)),
    "hand_eager_split": (lambda: HandAttention(eager=True, split=True), (2, 5, 12)),
    "separate_heads": (SeparateHeads, (2, 5, 10)),
    "nanogpt": (NanoGPTAttention, (2, 6, 12)),
    "einsum": (EinsumAttention, (2, 5, 12)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_derived_spec_is_an_exact_symmetry(case):
    make, shape = CASES[case]
    spec = assert_exact_symmetry(make(), torch.randn(*shape, dtype=torch.float64))
    assert any(g.kind == "heads" for g in spec.block_groups)


@pytest.mark.parametrize("model", [SelfAttention(), WeightedAttention()], ids=["sdpa", "bmm"])
def test_packed_multihead_attention_spec(model):
    spec = PermutationSpec.from_module(model, torch.randn(2, 5, 12))
    packed = ("P_attn.qk", "P_attn.qk", "P_attn.v")
    assert {k: v for k, v in spec.axes_to_perm.items() if k.startswith("attn.")} == {
        "attn.in_proj_weight": (packed, None), "attn.in_proj_bias": (packed,),
        "attn.out_proj.weight": (None, "P_attn.v"), "attn.out_proj.bias": (None,)}
    (group,) = spec.block_groups
    assert (group.name, group.kind, group.blocks) == ("H_attn", "heads", 3)
    assert set(group.perms) == {"P_attn.qk", "P_attn.v"}


def test_separate_projections_and_kdim_vdim():
    spec = PermutationSpec.from_module(CrossAttention(), torch.randn(2, 5, 12))
    axes = spec.axes_to_perm
    assert axes["attn.q_proj_weight"] == ("P_attn.qk", None)
    assert axes["attn.k_proj_weight"] == ("P_attn.qk", "P_keys")
    assert axes["attn.v_proj_weight"] == ("P_attn.v", "P_values")
    assert axes["attn.in_proj_bias"] == (("P_attn.qk", "P_attn.qk", "P_attn.v"),)


def test_encoder_layer_shares_the_residual_stream():
    spec = PermutationSpec.from_module(Encoder(True), torch.randn(2, 5, 5))
    axes = spec.axes_to_perm
    stream = axes["embed.weight"][0]
    assert axes["layer.norm1.weight"] == (stream,)
    assert axes["layer.self_attn.in_proj_weight"][1] == stream
    assert axes["layer.self_attn.out_proj.weight"][0] == stream
    assert axes["layer.linear1.weight"] == ("P_layer.linear1", stream)
    assert axes["head.weight"] == (None, stream)


def test_vit_class_token_and_positions_carry_the_stream():
    spec = PermutationSpec.from_module(ViT(), torch.randn(2, 3, 8, 8))
    stream = spec.axes_to_perm["patch.weight"][0]
    assert spec.axes_to_perm["cls"] == (None, None, stream)
    assert spec.axes_to_perm["pos"] == (None, None, stream)
    assert len(spec.block_groups) == 2  # one head group per layer


@pytest.mark.parametrize("case", ["mha", "mha_need_weights_mask", "hand_eager_split",
                                  "separate_heads"])
def test_mixing_dims_across_heads_breaks_the_function(case):
    make, shape = CASES[case]
    model = make().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    spec = PermutationSpec.from_module(model, x)
    group = spec.block_groups[0]
    free = PermutationSpec(spec.axes_to_perm, spec.sizes)  # the same perms, no head structure
    sd = random_weights(model)
    perms = spec.random_perms(torch.Generator().manual_seed(0))
    for name in group.perms:
        mixed = mix_across_blocks(spec, perms, name)
        with pytest.raises(AssertionError, match="differs"):
            check_equivalent(model, sd, free, mixed, x)


def test_matrix_transpose_attention_has_the_hand_written_heads():
    """``q @ k.mT`` (the ``aten::mT`` rule): the whole symmetry, not a pinned subgroup."""
    spec = PermutationSpec.from_module(StructuredViT(), torch.randn(2, 1, 8, 8))
    assert_same_up_to_names(spec, vit_spec())


class TimmAttention(nn.Module):
    """timm's packing: one reshape to (B, N, 3, H, d) splits the q/k/v segments and their heads
    at once, then ``unbind``."""

    def __init__(self, width=12, heads=3):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return x + self.proj(y)


class TimmRoundTrip(TimmAttention):
    """The 5-D tensor also reshaped back to the packed axis and read whole."""

    def __init__(self, width=12, heads=3):
        super().__init__(width, heads)
        self.mix = nn.Linear(3 * width, width)

    def forward(self, x):
        b, n, c = x.shape
        five = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = five.permute(2, 0, 3, 1, 4).unbind(0)
        y = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return x + self.proj(y) + self.mix(five.reshape(b, n, 3 * c))


@pytest.mark.parametrize("make", [TimmAttention, TimmRoundTrip])
def test_packed_five_dimensional_reshape_keeps_the_whole_heads_group(make):
    """q/k dims and v dims under their own perms, one head perm: as with q, k, v split first;
    reshaping the 5-D tensor back folds it to the packed axis again."""
    spec = assert_exact_symmetry(make(), torch.randn(2, 5, 12, dtype=torch.float64))
    (group,) = spec.block_groups
    qk, v = group.perms
    assert group.kind == "heads" and group.blocks == 3 and qk != v
    assert spec.axes_to_perm["qkv.weight"][0] == (qk, qk, v)
    if make is TimmRoundTrip:
        assert spec.axes_to_perm["mix.weight"][1] == (qk, qk, v)


class RMSNorm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class LlamaBlock(nn.Module):
    """A LLaMA-style block: hand-written RMSNorm, rotary embeddings (``rotate_half`` on a
    non-persistent cos/sin table), causal sdpa, SwiGLU, between an input and an output layer."""

    def __init__(self, width=16, heads=2, hidden=24, tokens=8):
        super().__init__()
        self.heads = heads
        self.inp, self.out = nn.Linear(6, width), nn.Linear(width, 3)
        self.n1, self.n2 = RMSNorm(width), RMSNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=False) for _ in range(4))
        self.w1, self.w3 = (nn.Linear(width, hidden, bias=False) for _ in range(2))
        self.w2 = nn.Linear(hidden, width, bias=False)
        dim = width // heads
        angle = torch.outer(torch.arange(tokens).float(),
                            1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))
        angle = torch.cat((angle, angle), -1)
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    @staticmethod
    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), dim=-1)

    def forward(self, x):
        x = self.inp(x)
        b, t, c = x.shape
        h = self.n1(x)
        q, k, v = (f(h).view(b, t, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        cos, sin = self.cos[:t].to(q.dtype), self.sin[:t].to(q.dtype)
        q, k = (z * cos + self.rotate_half(z) * sin for z in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.o(y)
        h = self.n2(x)
        return self.out(x + self.w2(F.silu(self.w1(h)) * self.w3(h)))


def test_rotary_embeddings_pin_the_query_key_dims_only():
    """Rotation frequencies differ per q/k dim, so those stay put, and with them the heads
    (the spec cannot name a head permutation without inner perms); v's dims move per head,
    the residual stream and SwiGLU's hidden units (w1 and w3 alike) move freely."""
    spec = assert_exact_symmetry(LlamaBlock(), torch.randn(2, 8, 6, dtype=torch.float64))
    axes = spec.axes_to_perm
    assert axes["q.weight"][0] is None and axes["k.weight"][0] is None
    assert isinstance(axes["v.weight"][0], tuple) and len(set(axes["v.weight"][0])) == 2
    assert axes["inp.weight"][0] is not None and axes["w1.weight"][0] == axes["w3.weight"][0]
