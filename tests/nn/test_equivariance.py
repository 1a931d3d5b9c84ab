"""Deep-Align's symmetries (Props 3.1-3.2), checked in float64 with deepalign.testing."""
import pytest
import torch

from deepalign import PermutationSpec
from deepalign.models import CNN, MLP
from deepalign.nn import DeepAlign
from deepalign.testing import assert_aligner_equivariant, random_state_dict
from deepalign.weightspace import invert_permutations, permute, random_permutations

SMALL = {"hidden": 8, "n_hidden": 2, "out_features": 8}


def _mlp():
    return MLP(12, hidden=(6, 5, 7), out_features=3)


def _cnn():
    return CNN(in_channels=2, channels=(4, 5, 3), out_features=3, image_size=(8, 8))


def _spec(model):
    x = torch.zeros(1, 2, 8, 8) if isinstance(model, CNN) else torch.zeros(1, 12)
    return PermutationSpec.from_module(model, x)


def _train_a_little(aligner, spec, model, gen):
    """A few optimiser steps so that the weights (and BN statistics) are not at init."""
    opt = torch.optim.SGD(aligner.parameters(), lr=0.05)
    aligner.train()
    for _ in range(3):
        a = random_state_dict(model, 4, generator=gen)
        b = random_state_dict(model, 4, generator=gen)
        loss = sum((p - torch.eye(p.shape[-1], dtype=p.dtype)).square().sum()
                   for p in aligner.soft_align(a, b, n_iters=5).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return aligner.eval()


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("config,extra,trained", [
    ("default", SMALL, False),
    ("default", SMALL, True),
    ("paper", SMALL, True),
    ("default", {**SMALL, "set_layer": "sab", "reduction": "mean", "downsample": 3,
                 "downsample_every_layer": True, "norm": None, "dropout": 0.2}, True),
    ("default", {**SMALL, "weight_similarity": True}, True),
    ("default", {**SMALL, "weight_similarity": True, "downsample": 3}, True),
    ("default", {**SMALL, "weight_similarity": True, "normalize_layers": True}, True),
    ("default", {**SMALL, "io_linear": True}, True),
    ("default", {**SMALL, "io_linear": True, "downsample": 3}, True)],
    ids=["default-untrained", "default-trained", "paper-trained", "every-layer-downsample",
         "weight-similarity", "weight-similarity-downsample", "normalized-layers", "io-linear",
         "io-linear-downsample"])
def test_aligner_is_equivariant_and_swap_symmetric(arch, config, extra, trained):
    gen = torch.Generator().manual_seed(0)
    model = _mlp() if arch == "mlp" else _cnn()
    spec = _spec(model)
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), config, **extra).double()
    if trained:
        _train_a_little(aligner, spec, model, gen)
    aligner.eval()
    sd_a = random_state_dict(model, 2, generator=gen)
    sd_b = random_state_dict(model, 2, generator=gen)
    assert_aligner_equivariant(aligner, spec, sd_a, sd_b, n_iters=20, generator=gen)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_weight_similarity_is_equivariant_while_training(arch):
    # training mode: the inner plans are symmetrised Sinkhorn plans (differentiable), not
    # assignments; BatchNorm's batch statistics are invariant to neuron order
    gen = torch.Generator().manual_seed(3)
    model = _mlp() if arch == "mlp" else _cnn()
    spec = _spec(model)
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), weight_similarity=True,
                                  **SMALL).double().train()
    sd_a = random_state_dict(model, 2, generator=gen)
    sd_b = random_state_dict(model, 2, generator=gen)
    g = random_permutations(spec.perm_sizes(sd_a, batched=True), 2, gen)
    h = random_permutations(spec.perm_sizes(sd_a, batched=True), 2, gen)
    base = aligner(sd_a, sd_b)
    moved = aligner(permute(sd_a, spec, g), permute(sd_b, spec, h))
    swapped = aligner(sd_b, sd_a)
    for k in base:
        expected = base[k].gather(-2, g[k][..., :, None].expand_as(base[k]))
        expected = expected.gather(-1, h[k][..., None, :].expand_as(base[k]))
        torch.testing.assert_close(moved[k], expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(swapped[k], base[k].mT, rtol=1e-10, atol=1e-10)


def test_weight_similarity_alone_is_weight_matchings_forward_sweep():
    # with the learned part silenced, an aligner with the term finds the planted permutation
    # of a network and a permuted, slightly perturbed copy of it
    gen = torch.Generator().manual_seed(4)
    model = _mlp()
    spec = _spec(model)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), weight_similarity=True,
                                  **SMALL).double().eval()
    with torch.no_grad():
        aligner.scale.zero_()
    a = random_state_dict(model, 3, generator=gen)
    t = random_permutations(spec.perm_sizes(a, batched=True), 3, gen)
    b = {k: v + 0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
         for k, v in permute(a, spec, t).items()}
    found = aligner.align(a, b)
    expected = invert_permutations(t)
    for k in found:
        assert torch.equal(found[k], expected[k])


def test_normalized_layers_make_the_learned_part_blind_to_layer_scales():
    gen = torch.Generator().manual_seed(5)
    model = _mlp()
    spec = _spec(model)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), normalize_layers=True,
                                  **SMALL).double().eval()
    a, b = random_state_dict(model, 2, generator=gen), random_state_dict(model, 2, generator=gen)
    scaled = {k: v * (1.7 if k.startswith("layers.0.") else 0.4 if k.startswith("layers.2.")
                      else 1.0) for k, v in a.items()}
    base, moved = aligner(a, b), aligner(scaled, b)
    for k in base:
        torch.testing.assert_close(moved[k], base[k], rtol=1e-10, atol=1e-10)


def test_single_pair_matches_batch_entry():
    gen = torch.Generator().manual_seed(1)
    model = _mlp()
    aligner = DeepAlign.from_spec(_spec(model), model.state_dict()).double().eval()
    a, b = random_state_dict(model, 3, generator=gen), random_state_dict(model, 3, generator=gen)
    batched = aligner(a, b)
    single = aligner({k: v[1] for k, v in a.items()}, {k: v[1] for k, v in b.items()})
    for k in batched:
        torch.testing.assert_close(single[k], batched[k][1], rtol=1e-12, atol=1e-12)


def test_equivariance_helper_catches_a_broken_aligner():
    gen = torch.Generator().manual_seed(2)
    model = _mlp()
    spec = _spec(model)
    aligner = DeepAlign.from_spec(spec, model.state_dict()).double().eval()
    real_forward = aligner.forward

    def broken(a, b):  # depends on neuron order: adds a position-dependent term
        out = real_forward(a, b)
        return {k: v + torch.arange(v.shape[-1], dtype=v.dtype) * 1e-3 for k, v in out.items()}

    aligner.forward = broken
    a, b = random_state_dict(model, 2, generator=gen), random_state_dict(model, 2, generator=gen)
    with pytest.raises(AssertionError):
        assert_aligner_equivariant(aligner, spec, a, b, generator=gen)
