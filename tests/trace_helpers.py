"""Shared by the spec-derivation tests: random float64 weights and the exact-symmetry check."""
import torch

from deepalign.testing import random_state_dict
from deepalign.weightspace import PermutationSpec, check_equivalent


def random_weights(model, seed=0):
    """``deepalign.testing.random_state_dict`` (float64, std 1/sqrt(fan_in)) with positive
    BatchNorm variances."""
    sd = random_state_dict(model, generator=torch.Generator().manual_seed(seed))
    for key in sd:
        if key.endswith("running_var"):
            sd[key] = sd[key].abs() + 0.5
    return sd


def assert_exact_symmetry(model, x, spec=None, seeds=(0, 1, 2)):
    """Derive the spec (unless given), then check random group elements keep the function."""
    model = model.double().eval()
    spec = PermutationSpec.from_module(model, x) if spec is None else spec
    sd = random_weights(model)
    for seed in seeds:
        perms = spec.random_perms(torch.Generator().manual_seed(seed))
        assert check_equivalent(model, sd, spec, perms, x) <= 1e-9
    return spec


def mix_across_blocks(spec, perms, name):
    """``perms`` with ``name`` replaced by a perm that moves features across its blocks."""
    out = dict(perms)
    out[name] = perms[name].roll(1)  # shifts every feature into the neighbouring block
    return out


def assert_same_up_to_names(spec, hand):
    """``spec`` has exactly the perms, axes and block groups of ``hand``, up to perm names."""
    assert spec.axes_to_perm.keys() == hand.axes_to_perm.keys()
    rename = {}
    for key, items in hand.axes_to_perm.items():
        assert len(items) == len(spec.axes_to_perm[key]), key
        for mine, theirs in zip(items, spec.axes_to_perm[key]):
            mine = (mine,) if isinstance(mine, str) else mine or ()
            theirs = (theirs,) if isinstance(theirs, str) else theirs or ()
            assert len(mine) == len(theirs), key
            for a, b in zip(mine, theirs):
                assert rename.setdefault(a, b) == b, key
    assert sorted(rename.values()) == sorted(spec.perm_names)  # one to one
    assert len(spec.block_groups) == len(hand.block_groups)
    assert [(g.kind, g.blocks, tuple(rename[p] for p in h.perms))
            for g, h in zip(spec.block_groups, hand.block_groups)] == [
        (h.kind, h.blocks, g.perms) for g, h in zip(spec.block_groups, hand.block_groups)]
