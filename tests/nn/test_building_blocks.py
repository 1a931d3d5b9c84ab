"""The encoder's hand-optimised pieces against plain, obviously-right PyTorch (float64)."""
import pytest
import torch
import torch.nn.functional as F

from deepalign.nn._equivariant import _row_col_pool
from deepalign.nn._sets import SetAttentionLayer
from deepalign.nn._tuple_ops import TupleBatchNorm


def test_row_col_max_matches_amax_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 5, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    rows, cols = _row_col_pool(w, "max")
    torch.testing.assert_close(rows, w.amax(2))
    torch.testing.assert_close(cols, w.amax(1))
    # random entries have no ties, where every max-subgradient agrees
    assert torch.autograd.gradcheck(lambda x: _row_col_pool(x, "max"), (w,))


def test_set_attention_matches_sdpa_per_set():
    torch.manual_seed(0)
    layer = SetAttentionLayer(3, 12, 10, heads=4, hidden=16).double()
    xs = [torch.randn(5, d, 12, dtype=torch.float64) for d in (7, 4, 1)]
    for k, (x, got) in enumerate(zip(xs, layer(xs))):
        q, key, v = (x @ layer.qkv.weight[k] + layer.qkv.bias[k]).chunk(3, dim=-1)
        split = lambda t: t.reshape(5, x.shape[1], 4, -1).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(split(q), split(key), split(v))
        o = q + o.transpose(1, 2).reshape(5, x.shape[1], -1)
        o = o + torch.relu(o @ layer.mix.weight[k] + layer.mix.bias[k])
        torch.testing.assert_close(got, o @ layer.proj.weight[k] + layer.proj.bias[k])


def test_tuple_batch_norm_matches_per_tensor_statistics():
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=gen),
               torch.randn(4, 2, 3, 6, dtype=torch.float64, generator=gen)]
    biases = [torch.randn(4, 3, 6, dtype=torch.float64, generator=gen),
              torch.randn(4, 2, 6, dtype=torch.float64, generator=gen)]
    bn = TupleBatchNorm(2, 6, relu=True).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.uniform_(-0.5, 0.5, generator=gen)
    out_w, out_b = bn(weights, biases)
    for t, (x, y) in enumerate(zip(weights + biases, out_w + out_b)):
        flat = x.reshape(-1, 6)
        var, mean = torch.var_mean(flat, dim=0, correction=0)
        ref = torch.relu((x - mean) / torch.sqrt(var + bn.eps) * bn.weight[t] + bn.bias[t])
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(bn.running_mean[t], 0.1 * mean)
        torch.testing.assert_close(bn.running_var[t], 0.9 + 0.1 * flat.var(dim=0))
    bn.eval()
    out_w, _ = bn(weights, biases)
    scale = bn.weight[0] / torch.sqrt(bn.running_var[0] + bn.eps)
    torch.testing.assert_close(out_w[0], torch.relu((weights[0] - bn.running_mean[0]) * scale
                                                    + bn.bias[0]))


@pytest.mark.parametrize("overrides", [
    {}, {"norm": None}, {"dropout": 0.2}, {"downsample": 4}, {"io_linear": True},
    {"downsample": 4, "downsample_every_layer": True, "set_layer": "sab", "heads": 2,
     "reduction": "max"},
])
def test_eval_encoder_folds_batchnorm_and_relu_exactly(overrides):
    from deepalign.nn import make_config
    from deepalign.nn._encoder import WeightSpaceEncoder

    torch.manual_seed(0)
    config = make_config("default", hidden=8, n_hidden=2, out_features=6, **overrides)
    enc = WeightSpaceEncoder([7, 5, 4, 3], 1, config).double()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # BatchNorm with non-trivial statistics and affine
        for module in enc.modules():
            if isinstance(module, TupleBatchNorm):
                module.running_mean.normal_(0, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.uniform_(-0.5, 0.5, generator=gen)
    sizes = [(5, 7), (4, 5), (3, 4)]
    weights = [torch.randn(3, o, i, 1, dtype=torch.float64, generator=gen) for o, i in sizes]
    biases = [torch.randn(3, o, 1, dtype=torch.float64, generator=gen) for o, _ in sizes]
    enc.eval()
    w, b = weights, biases
    for i, layer in enumerate(enc.layers):  # unfolded: each block on its own
        w, b, _ = layer(w, b)
        if i < len(enc.between):
            w, b = enc.between[i](w, b)
    assert len(b) == 2  # the two hidden sets
    got = enc(weights, biases)  # gradients on: the fold's entry pass is the reference
    with torch.no_grad():  # the fused kernel (linear_relu_pool), pooling in the same pass
        fused = enc(weights, biases)
    for x, y, z in zip(got, fused, b):
        torch.testing.assert_close(x, y)
        torch.testing.assert_close(z, y)


def test_io_linear_adds_linear_maps_of_the_fixed_side_weights():
    # with its maps at zero the encoder is the plain one; a map of the first weight's rows
    # moves the first hidden set's readout
    from deepalign.nn import make_config
    from deepalign.nn._encoder import WeightSpaceEncoder

    torch.manual_seed(0)
    sizes = [7, 5, 4, 3]
    plain = WeightSpaceEncoder(sizes, 1, make_config("default", hidden=8, n_hidden=2,
                                                     out_features=6)).double().eval()
    enc = WeightSpaceEncoder(sizes, 1, make_config("default", hidden=8, n_hidden=2,
                                                   out_features=6, io_linear=True)).double()
    missing = enc.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["layers.0.io_in", "layers.0.io_out"]
    assert enc.layers[0].io_in.shape == (7, 24) and enc.layers[0].io_out.shape == (3, 24)
    enc.eval()
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(2, o, i, 1, dtype=torch.float64, generator=gen)
               for o, i in zip(sizes[1:], sizes)]
    biases = [torch.randn(2, o, 1, dtype=torch.float64, generator=gen) for o in sizes[1:]]
    with torch.no_grad():
        mapped = enc(weights, biases)
        enc.layers[0].io_in.zero_()
        enc.layers[0].io_out.zero_()
        zeroed = enc(weights, biases)
        reference = plain(weights, biases)
    for got, want in zip(zeroed, reference):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(mapped[0], zeroed[0])


def test_a_layer_drops_its_weights_only_in_the_folded_pass():
    from deepalign.nn import WeightSpaceLayer

    layer = WeightSpaceLayer([3, 4, 2], 1, 1, 5, reduction="mean")
    weights = [torch.randn(2, 4, 3, 1), torch.randn(2, 2, 4, 1)]
    biases = [torch.randn(2, 4, 1), torch.randn(2, 2, 1)]
    with pytest.raises(ValueError, match="keep_weights=False needs relu_affine"):
        layer(weights, biases, keep_weights=False)
    with torch.no_grad():
        new_w, new_b, pools = layer(weights, biases, relu_affine=(None, None), keep_weights=False)
        kept_w, _, _ = layer(weights, biases, relu_affine=(None, None))
    assert new_w is None and len(new_b) == 2
    for w, rows, cols in zip(kept_w, *pools):  # the pools are those of the weights not formed
        torch.testing.assert_close(rows, w.mean(2))
        torch.testing.assert_close(cols, w.mean(1))
