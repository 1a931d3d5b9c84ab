"""The graph encoder is equivariant to each spec's permutation group, numerically in float64,
and to no larger group: non-symmetries (input units, heads, untied residuals) change it."""
import pytest
import torch
from torch import nn

from deepalign.models import build_model, example_input
from deepalign.nn.graph import GraphEncoder, WeightGraph
from deepalign.testing import random_state_dict
from deepalign.weightspace import BlockGroup, GroupedAxis, PermutationSpec, permute

CONFIGS = {
    "mlp": dict(arch="mlp", in_features=8, hidden=[6, 5], out_features=3),
    "cnn": dict(arch="cnn", in_channels=2, channels=[4, 6], image_size=[8, 8], out_features=3),
    "resnet": dict(arch="resnet", in_channels=1, depth=8, width=0.25, image_size=[8, 8],
                   out_features=3),
}


class Attention(nn.Module):
    """Multi-head self-attention, width 12, 3 heads (packed q/k/v, as nn.MultiheadAttention)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(12, 3, batch_first=True)


def attention_spec():
    packed = ("P_qk", "P_qk", "P_v")
    return PermutationSpec({"attn.in_proj_weight": (packed, None), "attn.in_proj_bias": (packed,),
                            "attn.out_proj.weight": (None, "P_v"),
                            "attn.out_proj.bias": (None,)},
                           {"P_qk": 12, "P_v": 12}, [BlockGroup("H", "heads", 3, ("P_qk", "P_v"))])


class GroupedNet(nn.Module):
    """conv 2 -> 8, grouped conv 8 -> 12 in 4 groups, conv 12 -> 3."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3)
        self.conv2 = nn.Conv2d(8, 12, 3, groups=4)
        self.conv3 = nn.Conv2d(12, 3, 1)


def grouped_spec():
    return PermutationSpec({"conv1.weight": ("P1", None, None, None), "conv1.bias": ("P1",),
                            "conv2.weight": ("P2", GroupedAxis("P1"), None, None),
                            "conv2.bias": ("P2",),
                            "conv3.weight": (None, "P2", None, None), "conv3.bias": (None,)},
                           {"P1": 8, "P2": 12}, [BlockGroup("G", "groups", 4, ("P1", "P2"))])


def _plain(arch):
    model = build_model(CONFIGS[arch])
    return model, PermutationSpec.from_module(model, example_input(CONFIGS[arch]))


def _structured(case):
    make, spec_of = {"attention": (Attention, attention_spec),
                     "grouped_conv": (GroupedNet, grouped_spec)}[case]
    return make(), spec_of()


def _setup(model, spec, batch=2, seed=0):
    torch.manual_seed(seed)
    encoder = GraphEncoder.from_spec(spec, model.state_dict(), hidden=16, n_layers=3,
                                     out_features=8).double().eval()
    sd = random_state_dict(model, batch_size=batch, generator=torch.Generator().manual_seed(seed))
    return encoder, sd


def _moved(emb, perms):
    """``g`` applied to embeddings: row ``i`` of perm ``P`` becomes row ``g_P[i]``."""
    return {k: torch.gather(v, 1, perms[k][:, :, None].expand_as(v)) for k, v in emb.items()}


def _max_error(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("case", ["mlp", "cnn", "resnet", "attention", "grouped_conv"])
def test_embeddings_of_a_permuted_network_are_the_permuted_embeddings(case):
    model, spec = _plain(case) if case in CONFIGS else _structured(case)
    encoder, sd = _setup(model, spec)
    sizes = spec.check(model.state_dict())
    for seed in range(3):
        g = spec.random_perms(torch.Generator().manual_seed(seed), batch_size=2, sizes=sizes)
        with torch.no_grad():
            base, moved = encoder(sd), encoder(permute(sd, spec, g))
        torch.testing.assert_close(moved, _moved(base, g), rtol=1e-10, atol=1e-10)
        # fixed units (inputs, outputs) and block nodes are not permuted: their embeddings
        # are invariant; the block nodes move with the block permutation, checked above
        # through the member units
        with torch.no_grad():
            h, hg = encoder.node_embeddings(sd), encoder.node_embeddings(permute(sd, spec, g))
        for s in encoder.graph.sets.values():
            if s.kind == "fixed":
                rows = slice(s.offset, s.offset + s.size)
                torch.testing.assert_close(hg[:, rows], h[:, rows], rtol=1e-10, atol=1e-10)


def test_gradients_are_equivariant_too():
    model, spec = _plain("resnet")
    encoder, sd = _setup(model, spec, batch=1)
    g = spec.random_perms(torch.Generator().manual_seed(4), batch_size=1,
                          sizes=spec.check(model.state_dict()))
    grads = []
    for net in (sd, permute(sd, spec, g)):
        net = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in net.items()}
        emb = encoder(net)
        loss = sum((e.sum(1) ** 2).sum() for e in emb.values())  # invariant
        grads.append(torch.autograd.grad(loss, [net[k] for k in net if net[k].requires_grad]))
    # an invariant loss: the gradient w.r.t. g # v is g applied to the gradient w.r.t. v
    keys = [k for k in sd if sd[k].is_floating_point()]
    torch.testing.assert_close(dict(zip(keys, grads[1])),
                               permute(dict(zip(keys, grads[0])),
                                       PermutationSpec({k: spec.axes_to_perm[k] for k in keys},
                                                       spec.sizes), g),
                               rtol=1e-9, atol=1e-10)


def test_permuting_input_units_is_no_symmetry():
    """Input units are fixed: an encoder that could exchange them (here: the same encoder with
    its positional embeddings zeroed) gives the same hidden embeddings after shuffling the first
    layer's inputs, which the real one must not."""
    model, spec = _plain("mlp")
    encoder, sd = _setup(model, spec)
    shuffled = dict(sd)
    shuffled["layers.0.weight"] = sd["layers.0.weight"][:, :, torch.randperm(8)]
    with torch.no_grad():
        assert _max_error(encoder(shuffled), encoder(sd)) > 1e-4
        encoder.positional.zero_()
        assert _max_error(encoder(shuffled), encoder(sd)) < 1e-12


def test_mixing_units_across_heads_is_no_symmetry():
    """Heads: a permutation of P_v that mixes dims across heads breaks the function. The block
    nodes make the encoder see it; without them (the spec minus its block group) the encoder
    would be equivariant to it, the larger group of the pitfall."""
    model, spec = _structured("attention")
    free = PermutationSpec(spec.axes_to_perm, spec.sizes)
    g = spec.random_perms(torch.Generator().manual_seed(0), batch_size=2)
    g["P_v"] = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(s))
                            for s in (1, 2)])
    with pytest.raises(ValueError, match="block"):
        spec.check_structure(g)
    for structured, expect_equivariant in ((spec, False), (free, True)):
        encoder, sd = _setup(model, structured)
        with torch.no_grad():
            error = _max_error(encoder(permute(sd, free, g)), _moved(encoder(sd), g))
        assert (error < 1e-12) == expect_equivariant, (structured.block_groups, error)


def test_an_untied_residual_permutation_is_no_symmetry():
    """Permuting one residual branch's output (conv2 and its BatchNorm) without the stream it
    is added to breaks a ResNet; the tied stream nodes make the encoder see it."""
    model, spec = _plain("resnet")
    encoder, sd = _setup(model, spec)
    p = torch.randperm(4, generator=torch.Generator().manual_seed(3))
    broken = {k: (v[:, p] if k.startswith(("stages.0.0.conv2.", "stages.0.0.bn2."))
                  and v.dim() > 1 else v) for k, v in sd.items()}
    with torch.no_grad():
        base, moved = encoder(sd), encoder(broken)
    stream = {"P_stem.0": p.expand(2, 4)}
    assert _max_error(moved, base) > 1e-4
    assert _max_error({k: moved[k] for k in stream}, _moved({k: base[k] for k in stream},
                                                             stream)) > 1e-4


def test_graph_of_an_mlp():
    model, spec = _plain("mlp")
    graph = WeightGraph(spec, model.state_dict())
    assert graph.num_nodes == 6 + 5 + 8 + 3 and len(graph.src) == 6 * 8 + 5 * 6 + 3 * 5
    assert [s.kind for s in graph.sets.values()] == ["perm", "perm", "fixed", "fixed"]
    # layer 1's weight (5, 6): edge (i, j) runs from unit j of P_layers.0 to unit i of layer 1
    first = graph.edge_counts[0]
    p0, p1 = graph.sets["P_layers.0"], graph.sets["P_layers.1"]
    assert graph.src[first + 7].item() == p0.offset + 1
    assert graph.dst[first + 7].item() == p1.offset + 1


def test_batch_encodes_like_single_networks():
    model, spec = _plain("cnn")
    encoder, sd = _setup(model, spec, batch=3)
    with torch.no_grad():
        whole = encoder(sd)
        single = encoder({k: v[1] for k, v in sd.items()})
    torch.testing.assert_close({k: v[1:2] for k, v in whole.items()}, single,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axes, sizes, shapes, match", [
    ({"w": ("P", None, ("P", "Q"))}, {"P": 3, "Q": 2}, {"w": (3, 2, 5)},
     r"'w' has concatenated axes \[2\]"),
    ({"w": ("P", None, "Q"), "v": ("Q",)}, {"P": 3, "Q": 4}, {"w": (3, 2, 4), "v": (4,)},
     "'w' has perms .* on axis 2 beyond its"),
    ({"w": ("P", None), "t": ()}, {"P": 3}, {"w": (3, 2), "t": ()}, "scalar parameter 't'"),
])
def test_unsupported_parts_are_named(axes, sizes, shapes, match):
    spec = PermutationSpec(axes, sizes)
    with pytest.raises(NotImplementedError, match=match):
        WeightGraph(spec, {k: torch.zeros(s) for k, s in shapes.items()})


def test_nan_weights_are_a_clear_error():
    model, spec = _plain("mlp")
    encoder, sd = _setup(model, spec)
    sd["layers.1.weight"][0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="layers.1.weight.*NaN"):
        encoder(sd)


def vit_spec(depth=1, width=8, hidden=16, heads=2):
    """A hand-written spec of ``deepalign.models.ViT`` (until tracing covers it): one residual
    stream perm, per block a head group over packed q/k/v and an MLP perm."""
    axes = {"cls_token": (None, None, "P_res"), "pos_embed": (None, None, "P_res"),
            "patch.weight": ("P_res", None, None, None), "patch.bias": ("P_res",)}
    sizes, groups = {"P_res": width}, []
    for i in range(depth):
        b, qkv = f"blocks.{i}", (f"P_qk{i}", f"P_qk{i}", f"P_v{i}")
        axes.update({f"{b}.norm1.weight": ("P_res",), f"{b}.norm1.bias": ("P_res",),
                     f"{b}.attn.qkv.weight": (qkv, "P_res"), f"{b}.attn.qkv.bias": (qkv,),
                     f"{b}.attn.proj.weight": ("P_res", f"P_v{i}"),
                     f"{b}.attn.proj.bias": ("P_res",),
                     f"{b}.norm2.weight": ("P_res",), f"{b}.norm2.bias": ("P_res",),
                     f"{b}.fc1.weight": (f"P_mlp{i}", "P_res"), f"{b}.fc1.bias": (f"P_mlp{i}",),
                     f"{b}.fc2.weight": ("P_res", f"P_mlp{i}"), f"{b}.fc2.bias": ("P_res",)})
        sizes.update({f"P_qk{i}": width, f"P_v{i}": width, f"P_mlp{i}": hidden})
        groups.append(BlockGroup(f"H{i}", "heads", heads, (f"P_qk{i}", f"P_v{i}")))
    axes.update({"norm.weight": ("P_res",), "norm.bias": ("P_res",),
                 "head.weight": (None, "P_res"), "head.bias": (None,)})
    return PermutationSpec(axes, sizes, groups)


def test_a_whole_vit_is_read_and_encoded_equivariantly():
    from deepalign.models import ViT
    from deepalign.weightspace import check_equivalent

    model = ViT(1, (8, 8), patch_size=4, width=8, depth=2, heads=2, hidden=16).double()
    spec = vit_spec(depth=2)
    encoder, sd = _setup(model, spec)
    g = spec.random_perms(torch.Generator().manual_seed(1), batch_size=2)
    # the spec is the ViT's symmetry: the permuted networks compute the same function
    one = {k: v[0] for k, v in sd.items()}
    assert check_equivalent(model, one, spec, {k: v[0] for k, v in g.items()},
                            torch.randn(3, 1, 8, 8, dtype=torch.float64)) < 1e-9
    with torch.no_grad():
        base, moved = encoder(sd), encoder(permute(sd, spec, g))
    torch.testing.assert_close(moved, _moved(base, g), rtol=1e-10, atol=1e-10)
    kinds = [s.kind for s in encoder.graph.sets.values()]
    assert kinds.count("blocks") == 2 and kinds.count("perm") == 7
