"""Weight-space augmentations and the labelled pairs built from them."""
import pytest
import torch

from deepalign import PermutationSpec, permute
from deepalign.models import CNN, MLP, batched_forward
from deepalign.nn import WeightLayout
from deepalign.testing import random_state_dict
from deepalign.training import Augmentation, PairSampler, augment
from deepalign.training._augment import mix_inputs
from deepalign.weightspace import random_permutations

OFF = Augmentation(noise=0, dropout=0, pos_scale=0, quantile_dropout=0)


def _setup(arch):
    if arch == "mlp":
        model, x = MLP(12, hidden=(6, 5), out_features=3), torch.randn(7, 12, dtype=torch.float64)
    else:
        model = CNN(in_channels=1, channels=(4, 5), out_features=3, image_size=(8, 8), pool=[0, 1])
        x = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    spec = PermutationSpec.from_module(model, x[:1].float())
    return model.double(), spec, WeightLayout.from_spec(spec, model.state_dict()), x


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_positive_rescaling_keeps_the_function(arch):
    model, spec, layout, x = _setup(arch)
    gen = torch.Generator().manual_seed(0)
    sd = random_state_dict(model, 3, generator=gen)
    out = augment(sd, layout, Augmentation(0, 0, 0.5, 0), gen)
    assert any(not torch.equal(out[k], sd[k]) for k in sd)
    torch.testing.assert_close(batched_forward(model, out, x), batched_forward(model, sd, x))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["permutation", "signed-permutation"])
def test_input_mixing_moves_the_input_space_and_keeps_the_alignment(arch, kind):
    model, spec, layout, x = _setup(arch)
    gen = torch.Generator().manual_seed(5)
    a = random_state_dict(model, 3, generator=gen)
    t = random_permutations(spec.perm_sizes(a, batched=True), 3, gen)
    b = permute(a, spec, t)
    mixed_a, mixed_b = mix_inputs([a, b], layout, kind, gen)
    first = layout.slots[0].weight
    if arch == "mlp":  # the CNN's one input channel only changes sign, or not at all
        assert not torch.equal(mixed_a[first], a[first])
    assert all(torch.equal(mixed_a[k], a[k]) for k in a if k != first)
    # the same hidden permutation still maps one mixed network onto the other
    for k, v in permute(mixed_a, spec, t).items():
        torch.testing.assert_close(v, mixed_b[k], rtol=0, atol=0)
    # every input of the mixed first layer is an input of the original, possibly negated:
    # recover that (signed) permutation Q from the columns and check W Q^T (Q x) = W x
    if arch == "mlp":
        w, m = a[first][0], mixed_a[first][0]
        source = (m.abs()[:, :, None] - w.abs()[:, None, :]).abs().sum(0).argmin(1)
        assert sorted(source.tolist()) == list(range(w.shape[1]))
        sign = torch.sign(m[0] / w[0, source])
        if kind == "permutation":
            assert (sign == 1).all()
        moved = x[:, source] * sign
        one = {k: v[:1] for k, v in a.items()}
        torch.testing.assert_close(batched_forward(model, {**one, first: mixed_a[first][:1]},
                                                   moved), batched_forward(model, one, x))
    assert mix_inputs([a], layout, "none", gen)[0] is a
    with pytest.raises(ValueError, match="input mixing must be one of"):
        mix_inputs([a], layout, "rotate", gen)


def test_dropouts_zero_weights_without_rescaling_survivors():
    model, spec, layout, _ = _setup("mlp")
    gen = torch.Generator().manual_seed(1)
    sd = random_state_dict(model, 64, generator=gen)
    out = augment(sd, layout, Augmentation(0, 0.2, 0, 0), gen)
    w, v = sd["layers.1.weight"], out["layers.1.weight"]
    kept = v != 0
    assert 0.1 < 1 - kept.double().mean() < 0.3
    assert torch.equal(v[kept], w[kept])
    out = augment(sd, layout, Augmentation(0, 0, 0, 0.5), gen)
    zeroed = torch.cat([(out[k] == 0).reshape(64, -1) for k in sd], 1).double().mean(1)
    assert zeroed.max() <= 0.5 and zeroed.std() > 0  # a random quantile per network


def test_augment_is_deterministic_given_the_generator():
    model, spec, layout, _ = _setup("mlp")
    sd = random_state_dict(model, 4, generator=torch.Generator().manual_seed(2))
    one = augment(sd, layout, Augmentation(), torch.Generator().manual_seed(3))
    two = augment(sd, layout, Augmentation(), torch.Generator().manual_seed(3))
    assert all(torch.equal(one[k], two[k]) for k in sd)


def test_labelled_pairs_carry_the_aligning_perm():
    model, spec, layout, _ = _setup("cnn")
    nets = random_state_dict(model, 5, generator=torch.Generator().manual_seed(4))
    sampler = PairSampler(nets, spec, layout, OFF)
    batch = sampler.sample(6, torch.Generator().manual_seed(5))
    back = permute(batch.labelled_b, spec, batch.target)
    for k in back:
        torch.testing.assert_close(back[k], batch.a[k], rtol=0, atol=0)
    first = next(iter(nets))
    ua, ub = batch.a[first], batch.unlabelled_b[first]
    assert ua.shape[0] == 6 and not any(torch.equal(x, y) for x, y in zip(ua, ub))


def test_bad_augmentation_strength_is_rejected():
    with pytest.raises(ValueError, match="pos_scale"):
        Augmentation(pos_scale=1.5)
