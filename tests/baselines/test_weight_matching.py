"""Weight matching: planted permutations, monotone objective, batching, warm starts, errors."""
import pytest
import torch

from alignment_nets import digits, stacked, state, trained
from deepalign.baselines import matching_cost, sweep_rng, weight_matching, weight_matching_objective
from deepalign.ops import linear_assignment
from deepalign.weightspace import (PermutationSpec, check_equivalent, identity_permutations,
                                   invert_permutations, permute, random_permutations)


def spec_of(kind):
    return PermutationSpec.from_module(trained(kind, 0), digits()[0][:2])


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
def test_recovers_planted_permutations_exactly(kind):
    spec, a = spec_of(kind), state(kind, 0)
    planted = random_permutations(spec.perm_sizes(a), 3, torch.Generator().manual_seed(7))
    b = permute(a, spec, planted)  # three differently permuted copies of A
    found = weight_matching(a, b, spec)
    expected = invert_permutations(planted)
    for name in spec.perm_names:
        assert torch.equal(found[name], expected[name]), name
    check_equivalent(trained(kind, 0), b, spec, found, digits()[2][:32])


def test_objective_never_decreases_across_sweeps():
    spec, a, b = spec_of("mlp"), state("mlp", 0), state("mlp", 1)
    identity = identity_permutations(spec.perm_sizes(a))
    values = [weight_matching_objective(a, b, spec, identity).item()]
    for sweeps in range(1, 5):  # same seed: each run extends the previous one by a sweep
        perms = weight_matching(a, b, spec, max_iter=sweeps, seed=3)
        values.append(weight_matching_objective(a, b, spec, perms).item())
    assert all(later >= earlier - 1e-9 for earlier, later in zip(values, values[1:])), values
    assert values[-1] > values[0]
    check_equivalent(trained("mlp", 0), b, spec, perms, digits()[2][:32])


def test_pairs_in_a_batch_are_independent():
    spec = spec_of("mlp")
    a, b = stacked("mlp", [0, 1]), stacked("mlp", [1, 0])
    together = weight_matching(a, b, spec, seed=5)
    first = weight_matching({k: v[:1] for k, v in a.items()}, {k: v[:1] for k, v in b.items()},
                            spec, seed=5)
    for name in spec.perm_names:
        assert torch.equal(together[name][:1], first[name])
    shared = weight_matching(state("mlp", 0), b, spec, seed=5)  # single A broadcast
    assert shared[spec.perm_names[0]].shape[0] == 2


def plain_weight_matching(a, b, spec, seed, max_iter=100):
    """Git Re-Basin's loop, one pair at a time, every similarity matrix rebuilt from scratch."""
    sizes = spec.check(a, batched=True)
    found = {name: [] for name in spec.perm_names}
    for i in range(next(iter(a.values())).shape[0]):
        ai, bi = ({k: v[i:i + 1] for k, v in sd.items()} for sd in (a, b))
        perms = {name: torch.arange(n)[None] for name, n in sizes.items()}
        rng = sweep_rng(seed, i)
        for _ in range(max_iter):
            progress = False
            for q in rng.permutation(len(spec.perm_names)):
                name = spec.perm_names[q]
                cost = matching_cost(ai, bi, spec, perms, name, sizes[name])[0]
                new = linear_assignment(cost, maximize=True)
                rows = torch.arange(sizes[name])
                progress |= bool(cost[rows, new].sum() > cost[rows, perms[name][0]].sum() + 1e-12)
                perms[name] = new[None]
            if not progress:
                break
        for name in spec.perm_names:
            found[name].append(perms[name][0])
    return {name: torch.stack(p) for name, p in found.items()}


@pytest.mark.parametrize("kind", ["mlp", "resnet"])
def test_same_perms_as_the_plain_algorithm_pair_by_pair(kind):
    # four pairs that stop after different numbers of sweeps, each on its own schedule
    spec = spec_of(kind)
    a, b = stacked(kind, [0, 1, 2, 0]), stacked(kind, [1, 2, 0, 2])
    a, b = ({k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
            for sd in (a, b))
    for max_iter in (2, 100):
        found = weight_matching(a, b, spec, seed=4, max_iter=max_iter)
        expected = plain_weight_matching(a, b, spec, seed=4, max_iter=max_iter)
        for name in spec.perm_names:
            assert torch.equal(found[name], expected[name]), (max_iter, name)


def test_warm_start_at_the_answer_stays_there():
    spec, a = spec_of("cnn"), state("cnn", 0)
    planted = random_permutations(spec.perm_sizes(a), None, torch.Generator().manual_seed(2))
    answer = invert_permutations(planted)
    found = weight_matching(a, permute(a, spec, planted), spec, max_iter=1, init=answer)
    assert all(torch.equal(found[k], answer[k]) for k in answer)


def test_inputs_untouched_and_errors_name_the_parameter():
    spec, a, b = spec_of("mlp"), state("mlp", 0), state("mlp", 1)
    copy = {k: v.clone() for k, v in b.items()}
    weight_matching(a, b, spec, max_iter=2)
    assert all(torch.equal(copy[k], b[k]) for k in b)
    with pytest.raises(ValueError, match="fc1.weight.*NaN"):
        weight_matching(a, dict(b, **{"fc1.weight": b["fc1.weight"] * float("nan")}), spec)
    wide = dict(b, **{"fc2.bias": torch.zeros(11)})
    with pytest.raises(ValueError, match="fc2.bias"):
        weight_matching(a, wide, spec)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        weight_matching(a, dict(b, extra=torch.zeros(1)), spec)
