"""Activation matching, Sinkhorn re-basin and merging on structured specs, or clear refusals."""
import pytest
import torch

from alignment_nets import digits, state, trained
from deepalign.baselines import activation_matching, merge, sinkhorn_rebasin
from deepalign.models import ViT, batched_forward
from deepalign.testing import random_state_dict
from deepalign.baselines._block_assignment import block_permutation
from deepalign.weightspace import (BlockGroup, GroupedAxis, PermutationSpec, check_equivalent,
                                   invert_permutations, permute)
from deepalign.weightspace._perm_sets import to_soft
from deepalign.weightspace._permute import permute_tensor
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


@pytest.mark.parametrize("kind", ["vit", "resnext"])
def test_sinkhorn_respects_heads_and_convolution_groups(kind):
    """Heads are rounded hierarchically; convolution groups get block-diagonal soft perms, so
    without an init they keep B's group order (a hard init may reorder them)."""
    model, spec, a, b, perms, inputs = planted(kind, 2)
    data = (inputs(), torch.tensor([0, 3, 1]))
    answer = invert_permutations(perms)
    back = sinkhorn_rebasin(model, a, b, spec, data, init=answer, n_steps=0)
    assert all(torch.equal(back[k], answer[k]) for k in answer)
    for init in (answer, None):
        found = sinkhorn_rebasin(model, a, b, spec, data, init=init, n_steps=3, batch_size=3)
        spec.check_structure(found)
        assert check_equivalent(model, b, spec, found, inputs()) <= 1e-9
    for group in spec.block_groups:
        if group.kind == "groups":
            for p in group.perms:
                assert torch.equal(block_permutation(found[p], group.blocks),
                                   torch.arange(group.blocks).expand(2, -1))


def test_soft_perm_on_a_grouped_axis_matches_the_hard_one_and_stays_in_groups():
    model, spec, a, _, perms, _ = planted("resnext", 1)
    inner = {}
    for group in spec.block_groups:  # the groups in place, random perms inside
        for p in group.perms:
            m = spec.sizes[p] // group.blocks
            inner[p] = (torch.stack([torch.randperm(m) for _ in range(group.blocks)])
                        + torch.arange(group.blocks)[:, None] * m).flatten()[None]
    hard = {**{k: v[:1] for k, v in perms.items()}, **inner}
    soft = to_soft(hard, torch.float64)
    for key, axes in spec.axes_to_perm.items():
        x = a[key].double()[None]
        torch.testing.assert_close(permute_tensor(x, axes, soft), permute_tensor(x, axes, hard))
    key, axis = next(k for k, item in spec.structured_axes.items()
                     if isinstance(item, GroupedAxis))
    name = spec.structured_axes[(key, axis)].perm
    mixed = dict(soft)
    mixed[name] = soft[name].roll(1, dims=-1)  # moves channels across groups
    with pytest.raises(ValueError, match="block diagonal"):
        permute_tensor(a[key].double()[None], spec.axes_to_perm[key], mixed)


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
