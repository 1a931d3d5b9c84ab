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
