"""permute: hard and soft perms, batching, block axes, inverses, checks and errors."""
import pytest
import torch

from deepalign.weightspace import (PermutationSpec, check_equivalent, compose_permutations,
                                   invert_permutations, permute, random_permutations, to_soft)

AXES = {"fc0.weight": ("P0", None), "fc0.bias": ("P0",), "fc1.weight": ("P1", "P0"),
        "fc1.bias": ("P1",), "fc2.weight": (None, "P1"), "fc2.bias": (None,)}
SPEC = PermutationSpec(AXES)


def state(batch=(), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"fc0.weight": (4, 3), "fc0.bias": (4,), "fc1.weight": (5, 4), "fc1.bias": (5,),
              "fc2.weight": (2, 5), "fc2.bias": (2,)}
    return {k: torch.randn(*batch, *s, generator=gen, dtype=dtype) for k, s in shapes.items()}


def perms(batch=None, seed=0):
    return random_permutations({"P0": 4, "P1": 5}, batch, torch.Generator().manual_seed(seed))


def test_hard_perm_gathers_each_axis():
    sd, p = state(), perms()
    out = permute(sd, SPEC, p)
    expected = sd["fc1.weight"][p["P1"]][:, p["P0"]]
    torch.testing.assert_close(out["fc1.weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["fc2.weight"], sd["fc2.weight"][:, p["P1"]], rtol=0, atol=0)
    torch.testing.assert_close(out["fc2.bias"], sd["fc2.bias"], rtol=0, atol=0)


def test_soft_perm_is_matrix_product_and_one_hot_matches_hard():
    sd = state()
    soft = {name: torch.rand(n, n, dtype=torch.float64) for name, n in [("P0", 4), ("P1", 5)]}
    out = permute(sd, SPEC, soft)
    torch.testing.assert_close(out["fc1.weight"], soft["P1"] @ sd["fc1.weight"] @ soft["P0"].T)
    torch.testing.assert_close(out["fc0.bias"], soft["P0"] @ sd["fc0.bias"])
    hard = perms()
    torch.testing.assert_close(permute(sd, SPEC, to_soft(hard, torch.float64)),
                               permute(sd, SPEC, hard), rtol=0, atol=1e-15)


def test_block_axis_permutes_channel_blocks():
    spec = PermutationSpec({"conv.weight": ("P", None, None, None), "fc.weight": (None, "P")},
                           sizes={"P": 3})
    sd = {"conv.weight": torch.randn(3, 1, 2, 2), "fc.weight": torch.randn(2, 3 * 4)}
    p = {"P": torch.tensor([2, 0, 1])}
    out = permute(sd, spec, p)
    expected = sd["fc.weight"].reshape(2, 3, 4)[:, p["P"]].reshape(2, 12)
    torch.testing.assert_close(out["fc.weight"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("sd_batch, perm_batch", [((), 3), ((3,), None), ((3,), 3)])
def test_batches_of_state_dicts_and_perms(sd_batch, perm_batch):
    sd, p = state(sd_batch), perms(perm_batch)
    out = permute(sd, SPEC, p)
    for b in range(3):
        single_sd = {k: v[b] for k, v in sd.items()} if sd_batch else sd
        single_p = {k: v[b] for k, v in p.items()} if perm_batch else p
        expected = permute(single_sd, SPEC, single_p)
        for key in sd:
            torch.testing.assert_close(out[key][b], expected[key], rtol=0, atol=0)


def test_inverse_and_composition():
    sd, p, q = state(), perms(seed=1), perms(seed=2)
    back = permute(permute(sd, SPEC, p), SPEC, invert_permutations(p))
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    twice = permute(permute(sd, SPEC, p), SPEC, q)
    once = permute(sd, SPEC, compose_permutations(p, q))
    assert all(torch.equal(twice[k], once[k]) for k in sd)


def test_inputs_are_not_modified_and_outputs_own_memory():
    sd, p = state(), perms()
    copy = {k: v.clone() for k, v in sd.items()}
    out = permute(sd, SPEC, p)
    out["fc2.bias"].add_(1.0)
    assert all(torch.equal(copy[k], sd[k]) for k in sd)


@pytest.mark.parametrize("bad, match", [
    ({"P0": torch.tensor([0, 0, 1, 2]), "P1": torch.arange(5)}, "not a permutation"),
    ({"P0": torch.arange(3), "P1": torch.arange(5)}, "n = 4"),
    ({"P0": torch.arange(4)}, "missing \\['P1'\\]"),
    ({"P0": torch.full((4, 4), float("nan")), "P1": torch.arange(5)}, "NaN"),
    ({"P0": torch.arange(4).expand(2, 4), "P1": torch.arange(5).expand(3, 5)}, "batch size"),
])
def test_bad_perms_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        permute(state(), SPEC, bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_finite_weights_are_named(value, dtype):
    sd = state((2,), dtype)
    sd["fc1.weight"][1, 3, 2] = value
    with pytest.raises(ValueError, match=r"\['fc1.weight'\] contains NaN or inf"):
        permute(sd, SPEC, perms(2))


def test_state_batch_and_perm_batch_must_agree():
    with pytest.raises(ValueError, match="batch size 2 but perms have 3"):
        permute(state((2,)), SPEC, perms(3))


def test_check_equivalent_catches_a_wrong_spec():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 5),
                                torch.nn.ReLU(), torch.nn.Linear(5, 2))
    names = {"fc0": "0", "fc1": "2", "fc2": "4"}
    rename = {k: names[k.split(".")[0]] + "." + k.split(".")[1] for k in AXES}
    good = PermutationSpec({rename[k]: v for k, v in AXES.items()})
    sd = {rename[k]: v for k, v in state().items()}
    x = torch.randn(7, 3)
    assert check_equivalent(model, sd, good, perms(2), x) < 1e-12
    wrong = dict(good.axes_to_perm)
    wrong["2.weight"] = ("P1", None)  # forgets the input side of the hidden layer
    with pytest.raises(AssertionError, match="differs"):
        check_equivalent(model, sd, PermutationSpec(wrong), perms(), x)
    with pytest.raises(ValueError, match="hard perms"):
        check_equivalent(model, sd, good, to_soft(perms()), x)
