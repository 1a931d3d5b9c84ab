"""Weight matching on structured specs: exact block-group steps, planted recovery, monotony."""
import itertools

import pytest
import torch

from deepalign.baselines import weight_matching, weight_matching_objective
from deepalign.baselines._block_assignment import block_assignment, inner_assignment
from deepalign.testing import random_state_dict
from deepalign.weightspace import check_equivalent, invert_permutations, permute
from deepalign.weightspace._structure import compose_blocks
from structured_nets import MODELS


def brute_force_group(costs, blocks):
    """max over every block-structured perm set of sum_k <C_k, P_k>, by enumeration."""
    best = -float("inf")
    for s in itertools.permutations(range(blocks)):
        total = 0.0
        for cost in costs:
            m = cost.shape[-1] // blocks
            for h in range(blocks):  # inner problems are independent once s is fixed
                sub = cost[h * m:(h + 1) * m, s[h] * m:(s[h] + 1) * m]
                total += max(sum(sub[j, t[j]].item() for j in range(m))
                             for t in itertools.permutations(range(m)))
        best = max(best, total)
    return best


def full_enumeration(costs, blocks):
    """The same maximum over explicit flat perms (every s, every inner t of every block)."""
    m = costs[0].shape[-1] // blocks
    inner = list(itertools.product(itertools.permutations(range(m)), repeat=blocks))
    best = -float("inf")
    for s in itertools.permutations(range(blocks)):
        value = 0.0
        for cost in costs:
            value += max(
                cost[torch.arange(blocks * m),
                     compose_blocks(torch.tensor(s), torch.tensor(t))].sum().item()
                for t in inner)
        best = max(best, value)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_hierarchical_step_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    blocks, m, pairs = 3, 2, 3
    costs = [torch.randn(pairs, blocks * m, blocks * m, generator=gen, dtype=torch.float64)
             for _ in range(2)]
    perms, s, _ = block_assignment(costs, blocks)
    for i in range(pairs):
        found = sum(c[i, torch.arange(blocks * m), p[i]].sum().item()
                    for c, p in zip(costs, perms))
        expected = brute_force_group([c[i] for c in costs], blocks)
        assert abs(found - expected) < 1e-9
        if i == 0:
            assert abs(full_enumeration([c[i] for c in costs], blocks) - expected) < 1e-9
        for p in perms:  # block-structured, one shared block permutation
            assert torch.equal(p[i].view(blocks, m) // m, s[i][:, None].expand(blocks, m))


def test_members_of_different_block_sizes_and_fixed_blocks():
    gen = torch.Generator().manual_seed(5)
    costs = [torch.randn(2, 6, 6, generator=gen, dtype=torch.float64),
             torch.randn(2, 9, 9, generator=gen, dtype=torch.float64)]
    perms, s, _ = block_assignment(costs, 3)
    for i in range(2):
        expected = brute_force_group([c[i] for c in costs], 3)
        found = sum(c[i, torch.arange(c.shape[-1]), p[i]].sum().item()
                    for c, p in zip(costs, perms))
        assert abs(found - expected) < 1e-9
    # with the block permutation fixed, inner_assignment is the best inner choice
    fixed = inner_assignment(costs[1], s, 3)
    assert torch.equal(fixed, perms[1])


def planted(kind, seed):
    make, spec_of, inputs = MODELS[kind]
    model, spec = make(), spec_of()
    a = random_state_dict(model, generator=torch.Generator().manual_seed(seed))
    perms = spec.random_perms(torch.Generator().manual_seed(seed + 1), batch_size=3)
    return model, spec, a, permute(a, spec, perms), perms, inputs


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_recovers_planted_group_elements_exactly(kind):
    model, spec, a, b, planted_perms, inputs = planted(kind, 0)
    found = weight_matching(a, b, spec, seed=1)
    spec.check_structure(found)
    aligned = permute(b, spec, found)
    for key, value in aligned.items():
        assert torch.equal(value, a[key].expand_as(value)), key
    expected = invert_permutations(planted_perms)
    for name in spec.perm_names:
        assert torch.equal(found[name], expected[name]), name
    check_equivalent(model, b, spec, found, inputs())


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_objective_never_decreases_and_structure_holds(kind):
    make, spec_of, inputs = MODELS[kind]
    model, spec = make(), spec_of()
    gen = torch.Generator().manual_seed(3)
    a = random_state_dict(model, batch_size=3, generator=gen)
    b = random_state_dict(model, batch_size=3, generator=gen)
    values = [weight_matching_objective(a, b, spec, weight_matching(a, b, spec, max_iter=0))]
    for sweeps in range(1, 5):  # same seed: each run extends the previous one by a sweep
        perms = weight_matching(a, b, spec, max_iter=sweeps, seed=2)
        spec.check_structure(perms)
        values.append(weight_matching_objective(a, b, spec, perms))
    values = torch.stack(values)
    assert (values[1:] >= values[:-1] - 1e-9).all(), values
    assert (values[-1] > values[0]).all()
    check_equivalent(model, b, spec, perms, inputs())


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_warm_start_must_respect_the_blocks(kind):
    _, spec, a, b, planted_perms, _ = planted(kind, 4)
    answer = invert_permutations(planted_perms)
    found = weight_matching(a, b, spec, max_iter=1, init=answer)
    assert all(torch.equal(found[k], answer[k]) for k in answer)
    broken = dict(answer)
    name = spec.block_groups[0].perms[0]
    broken[name] = answer[name].flip(-1).roll(1, -1)
    with pytest.raises(ValueError, match="block"):
        weight_matching(a, b, spec, init=broken)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pairs_in_a_batch_are_independent(kind):
    make, spec_of, _ = MODELS[kind]
    model, spec = make(), spec_of()
    gen = torch.Generator().manual_seed(8)
    a = random_state_dict(model, batch_size=3, generator=gen)
    b = random_state_dict(model, batch_size=3, generator=gen)
    together = weight_matching(a, b, spec, seed=6)
    for i in range(3):
        alone = weight_matching({k: v[i] for k, v in a.items()}, {k: v[i] for k, v in b.items()},
                                spec, seed=6)
        # sweep orders depend on the pair index: replay pair i's with a batch padded before it
        padded = weight_matching({k: v[:i + 1] for k, v in a.items()},
                                 {k: v[:i + 1] for k, v in b.items()}, spec, seed=6)
        for name in spec.perm_names:
            assert torch.equal(together[name][i], padded[name][i]), (i, name)
        if i == 0:
            assert all(torch.equal(together[n][0], alone[n]) for n in spec.perm_names)
