"""PermutationSpec: construction, export/import, and the checks against a model."""
import json

import pytest
import torch

from deepalign.weightspace import PermutationSpec

MLP_AXES = {"fc0.weight": ("P0", None), "fc0.bias": ("P0",), "fc1.weight": ("P1", "P0"),
            "fc1.bias": ("P1",), "fc2.weight": (None, "P1"), "fc2.bias": (None,)}


def mlp_state(hidden=(4, 4)):
    widths = (3, *hidden, 2)
    sd = {}
    for i in range(3):
        sd[f"fc{i}.weight"] = torch.randn(widths[i + 1], widths[i])
        sd[f"fc{i}.bias"] = torch.randn(widths[i + 1])
    return sd


def test_inverse_map_in_execution_order():
    spec = PermutationSpec(MLP_AXES)
    assert spec.perm_names == ["P0", "P1"]
    assert spec.perm_to_axes["P0"] == [("fc0.weight", 0), ("fc0.bias", 0), ("fc1.weight", 1)]
    assert spec.perm_to_axes["P1"] == [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]


def test_dict_round_trip_through_json():
    spec = PermutationSpec(MLP_AXES)
    again = PermutationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert PermutationSpec.from_dict(MLP_AXES) == spec
    shapes = {k: tuple(v.shape) for k, v in mlp_state().items()}
    assert PermutationSpec.from_perm_to_axes(spec.perm_to_axes, shapes) == spec


def test_from_dict_rejects_inconsistent_inverse():
    data = PermutationSpec(MLP_AXES).to_dict()
    data["perm_to_axes"]["P0"] = data["perm_to_axes"]["P0"][:1]
    with pytest.raises(ValueError, match="perm_to_axes"):
        PermutationSpec.from_dict(data)


def test_check_returns_sizes():
    assert PermutationSpec(MLP_AXES).check(mlp_state((5, 7))) == {"P0": 5, "P1": 7}


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.update({"extra.weight": torch.zeros(2)}), "does not cover.*extra.weight"),
    (lambda sd: sd.pop("fc2.bias"), "model does not have"),
    (lambda sd: sd.update({"fc1.bias": torch.zeros(4, 1)}), "fc1.bias"),
    (lambda sd: sd.update({"fc1.bias": torch.zeros(6)}), "P1.*fc1.bias.*size 6"),
])
def test_check_names_the_problem(edit, match):
    sd = mlp_state()
    edit(sd)
    with pytest.raises(ValueError, match=match):
        PermutationSpec(MLP_AXES).check(sd)


def test_block_axes_need_declared_sizes():
    axes = {"conv.weight": ("P", None, None, None), "fc.weight": (None, "P")}
    sd = {"conv.weight": torch.zeros(4, 1, 3, 3), "fc.weight": torch.zeros(2, 4 * 9)}
    with pytest.raises(ValueError, match="fc.weight"):
        PermutationSpec(axes).check(sd)
    assert PermutationSpec(axes, sizes={"P": 4}).check(sd) == {"P": 4}
    with pytest.raises(ValueError, match="sizes must name"):
        PermutationSpec(axes, sizes={"Q": 4})


@pytest.mark.parametrize("bad", [{"w": "P"}, {"w": (3,)}, ["w"]])
def test_malformed_axes_raise_type_error(bad):
    with pytest.raises(TypeError):
        PermutationSpec(bad)
