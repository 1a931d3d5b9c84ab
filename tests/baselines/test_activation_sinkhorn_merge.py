"""Activation matching, Sinkhorn re-basin and merging: specifics beyond the barrier test."""
import pytest
import torch

from alignment_nets import digits, stacked, state, trained
from deepalign.baselines import activation_matching, merge, sinkhorn_rebasin, weight_matching
from deepalign.models import batched_forward
from deepalign.weightspace import PermutationSpec, check_equivalent, permute, random_permutations


def spec_of(kind):
    return PermutationSpec.from_module(trained(kind, 0), digits()[0][:2])


@pytest.mark.parametrize("metric", ["correlation", "inner"])
def test_activation_matching_recovers_planted_perms_under_renamed_spec(metric):
    spec, a = spec_of("cnn"), state("cnn", 0)
    renamed = PermutationSpec({k: tuple(None if p is None else p.lower() for p in axes)
                               for k, axes in spec.axes_to_perm.items()},
                              {p.lower(): n for p, n in spec.sizes.items()})
    planted = random_permutations(renamed.perm_sizes(a), 2, torch.Generator().manual_seed(3))
    b = permute(a, renamed, planted)
    found = activation_matching(trained("cnn", 0), a, b, renamed, digits()[0][:300],
                                metric=metric, batch_size=128)
    assert set(found) == set(renamed.perm_names)
    check_equivalent(trained("cnn", 0), b, renamed, found, digits()[2][:32])
    # dead units tie; any optimum is fine, so compare functions, not indices
    aligned = permute(b, renamed, found)
    out_a = batched_forward(trained("cnn", 0), {k: v.expand(2, *v.shape) for k, v in a.items()},
                            digits()[2][:32])
    torch.testing.assert_close(batched_forward(trained("cnn", 0), aligned, digits()[2][:32]),
                               out_a, rtol=1e-4, atol=1e-4)


def test_activation_matching_rejects_a_spec_with_other_ties():
    spec = spec_of("mlp")
    merged = PermutationSpec({k: tuple(None if p is None else "P" for p in axes)
                              for k, axes in spec.axes_to_perm.items()})
    with pytest.raises(ValueError, match="does not match"):
        activation_matching(trained("mlp", 0), state("mlp", 0), state("mlp", 1), merged,
                            digits()[0][:10])


def test_sinkhorn_zero_steps_rounds_its_init_back():
    spec, a, b = spec_of("mlp"), state("mlp", 0), state("mlp", 1)
    init = weight_matching(a, b, spec)
    out = sinkhorn_rebasin(trained("mlp", 0), a, b, spec, digits()[:2], init=init, n_steps=0)
    assert all(torch.equal(out[k], init[k]) for k in init)


def test_sinkhorn_bad_input_errors():
    spec, a, b = spec_of("mlp"), state("mlp", 0), state("mlp", 1)
    x, y = digits()[:2]
    with pytest.raises(ValueError, match="labelled"):
        sinkhorn_rebasin(trained("mlp", 0), a, b, spec, x, n_steps=1)
    with pytest.raises(ValueError, match="inputs of shape"):
        sinkhorn_rebasin(trained("mlp", 0), a, b, spec, (x[:, :, :4], y), n_steps=1)
    three = {k: p.expand(3, -1) for k, p in weight_matching(a, b, spec).items()}
    with pytest.raises(ValueError, match="init has batch size 3"):
        sinkhorn_rebasin(trained("mlp", 0), a, b, spec, (x, y), init=three, n_steps=1)


def test_merge_two_is_align_then_average():
    spec, a, b = spec_of("mlp"), state("mlp", 0), state("mlp", 1)
    result = merge([a, b], spec)
    perms = weight_matching(a, b, spec)
    aligned = permute(b, spec, perms)
    for key in a:
        torch.testing.assert_close(result.state_dict[key], (a[key] + aligned[key]) / 2)
    assert all(torch.equal(result.perms[k][0], torch.arange(len(result.perms[k][0])))
               for k in perms)


def test_merge_many_of_permuted_copies_gives_back_the_network():
    spec, base = spec_of("cnn"), state("cnn", 0)
    planted = random_permutations(spec.perm_sizes(base), 4, torch.Generator().manual_seed(9))
    copies = permute(base, spec, planted)
    result = merge(copies, spec, seed=1)
    check_equivalent(trained("cnn", 0), copies, spec, result.perms, digits()[2][:16])
    model, x = trained("cnn", 0), digits()[2][:64]
    one = {k: v[None] for k, v in result.state_dict.items()}
    torch.testing.assert_close(batched_forward(model, one, x),
                               batched_forward(model, {k: v[None] for k, v in base.items()}, x),
                               rtol=1e-4, atol=1e-4)


def test_merge_many_independent_models_and_errors():
    spec = spec_of("mlp")
    result = merge(stacked("mlp", [0, 1, 2]), spec, max_iter=3)
    assert result.perms[spec.perm_names[0]].shape[0] == 3
    with pytest.raises(ValueError, match="at least 2"):
        merge([state("mlp", 0)], spec)
