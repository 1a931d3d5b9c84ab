"""Weight matching: planted permutations, monotone objective, batching, warm starts, errors."""
import pytest
import torch

from alignment_nets import digits, stacked, state, trained
from deepalign.baselines import weight_matching, weight_matching_objective
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
