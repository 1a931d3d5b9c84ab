"""Activation matching, Sinkhorn re-basin and merging on structured specs, or clear refusals."""
import pytest
import torch

from alignment_nets import digits, state, trained
from deepalign.baselines import activation_matching, merge, sinkhorn_rebasin
from deepalign.models import ViT, batched_forward
from deepalign.testing import random_state_dict
from deepalign.weightspace import (BlockGroup, PermutationSpec, check_equivalent,
                                   invert_permutations, permute)
from structured_nets import MODELS


def planted(kind, copies, seed=0):
    make, spec_of, inputs = MODELS[kind]
    model, spec = make(), spec_of()
    a = random_state_dict(model, generator=torch.Generator().manual_seed(seed))
    perms = spec.random_perms(torch.Generator().manual_seed(seed + 1), batch_size=copies)
    return model, spec, a, permute(a, spec, perms), perms, inputs


def test_activation_matching_rounds_block_groups_hierarchically():
    traced = PermutationSpec.from_module(trained("cnn", 0), digits()[0][:2])
    name = traced.perm_names[0]
    spec = PermutationSpec(traced.axes_to_perm, traced.sizes,
                           [BlockGroup("G0", "groups", 4, (name,))])
    a = state("cnn", 0)
    b = permute(a, spec, spec.random_perms(torch.Generator().manual_seed(2), batch_size=2))
    found = activation_matching(trained("cnn", 0), a, b, spec, digits()[0][:300],
                                batch_size=128)
    spec.check_structure(found)
    x = digits()[2][:32]
    out_a = batched_forward(trained("cnn", 0), {k: v.expand(2, *v.shape) for k, v in a.items()}, x)
    torch.testing.assert_close(batched_forward(trained("cnn", 0), permute(b, spec, found), x),
                               out_a, rtol=1e-4, atol=1e-4)


def zoo_vit(copies, seed=0):
    """The ViT zoo architecture (sdpa attention, packed q/k/v) with its derived spec."""
    model = ViT(1, image_size=(8, 8), patch_size=4, width=12, depth=2, heads=3, hidden=10,
                out_features=5).double()
    spec = PermutationSpec.from_module(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    a = random_state_dict(model, generator=torch.Generator().manual_seed(seed))
    perms = spec.random_perms(torch.Generator().manual_seed(seed + 1), batch_size=copies)
    return model, spec, a, permute(a, spec, perms), perms, lambda: torch.randn(3, 1, 8, 8)


@pytest.mark.parametrize("kind", ["resnext", "zoo_vit"])
def test_activation_matching_recovers_planted_structured_perms(kind):
    model, spec, a, b, perms, inputs = zoo_vit(2) if kind == "zoo_vit" else planted(kind, 2)
    model = model.double()
    x = torch.cat([inputs() for _ in range(40)]).double()
    x = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    found = activation_matching(model, a, b, spec, x)
    spec.check_structure(found)
    aligned = permute(b, spec, found)
    for key, value in a.items():
        torch.testing.assert_close(aligned[key], value.expand_as(aligned[key]))


def test_sinkhorn_on_packed_heads_respects_the_blocks():
    model, spec, a, b, perms, inputs = planted("vit", 2)
    data = (inputs(), torch.tensor([0, 3, 1]))
    answer = invert_permutations(perms)
    back = sinkhorn_rebasin(model, a, b, spec, data, init=answer, n_steps=0)
    assert all(torch.equal(back[k], answer[k]) for k in answer)
    found = sinkhorn_rebasin(model, a, b, spec, data, n_steps=3, batch_size=3)
    spec.check_structure(found)
    check_equivalent(model, b, spec, found, inputs())


def test_sinkhorn_refuses_grouped_convolutions():
    model, spec, a, b, _, inputs = planted("resnext", 1)
    with pytest.raises(NotImplementedError, match="grouped convolution axes"):
        sinkhorn_rebasin(model, a, b, spec, (inputs(), torch.tensor([0, 1, 2])), n_steps=1)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_merge_of_planted_copies_gives_back_the_network(kind):
    model, spec, a, b, _, inputs = planted(kind, 3)
    two = merge([a, {k: v[0] for k, v in b.items()}], spec)
    for key, value in two.state_dict.items():
        torch.testing.assert_close(value, a[key], rtol=0, atol=1e-12)
    many = merge({k: torch.cat([a[k][None], v]) for k, v in b.items()}, spec)
    spec.check_structure(many.perms)
    x = inputs()
    torch.testing.assert_close(batched_forward(model, {k: v[None] for k, v in many.state_dict
                                                       .items()}, x),
                               batched_forward(model, {k: v[None] for k, v in a.items()}, x))
