"""from_module on plain networks: chains, BatchNorm, Flatten blocks, residual ties, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alignment_nets import CNN, MLP, ResNet
from deepalign.weightspace import PermutationSpec, check_equivalent, random_permutations

X = torch.rand(6, 1, 8, 8)


def randomised(model):
    """A float64 state_dict with non-trivial BatchNorm statistics."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            sd[key] = value.clone()
        elif "running_var" in key:
            sd[key] = torch.rand(value.shape, generator=gen, dtype=torch.float64) + 0.5
        else:
            sd[key] = torch.randn(value.shape, generator=gen, dtype=torch.float64)
    return sd


def test_mlp_chain():
    spec = PermutationSpec.from_module(MLP(), X)
    assert spec.axes_to_perm == {
        "fc0.weight": ("P_fc0", None), "fc0.bias": ("P_fc0",),
        "fc1.weight": ("P_fc1", "P_fc0"), "fc1.bias": ("P_fc1",),
        "fc2.weight": (None, "P_fc1"), "fc2.bias": (None,)}


def test_cnn_batchnorm_and_flatten_blocks():
    spec = PermutationSpec.from_module(CNN(), X)
    assert spec.axes_to_perm["bn0.running_var"] == ("P_conv0",)
    assert spec.axes_to_perm["bn1.num_batches_tracked"] == ()
    assert spec.axes_to_perm["conv1.weight"] == ("P_conv1", "P_conv0", None, None)
    assert spec.axes_to_perm["fc.weight"] == (None, "P_conv1")
    assert spec.sizes == {"P_conv0": 8, "P_conv1": 16}  # fc.weight's 256 columns: 16 blocks


def test_residual_additions_tie_permutations():
    spec = PermutationSpec.from_module(ResNet(), X)
    axes = spec.axes_to_perm
    assert spec.perm_names == ["P_stem", "P_block1.conv1", "P_block2.conv1"]
    assert axes["block1.conv2.weight"] == ("P_stem", "P_block1.conv1", None, None)
    assert axes["block2.bn2.running_mean"] == ("P_stem",)
    assert axes["fc.weight"] == (None, "P_stem")


class Fancy(nn.Module):
    """Depthwise conv, LayerNorm, a scaled sine, view-flatten and a global mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4 * 64, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.sin(30.0 * self.depthwise(F.relu(self.conv(x))))
        x = self.norm(self.fc(x.view(x.size(0), -1)))
        return self.head(F.gelu(x))


@pytest.mark.parametrize("model_cls", [MLP, CNN, ResNet, Fancy])
def test_derived_spec_preserves_the_function(model_cls):
    model = model_cls()
    spec = PermutationSpec.from_module(model, X)
    sd = randomised(model)
    perms = random_permutations(spec.perm_sizes(sd), batch_size=3,
                                generator=torch.Generator().manual_seed(1))
    assert check_equivalent(model, sd, spec, perms, X) < 1e-9


def test_tracing_leaves_the_model_untouched():
    model = CNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PermutationSpec.from_module(model, X)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(64, 4), nn.Linear(64, 4), nn.Linear(8, 2)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concatenated_features_give_a_concatenated_axis():
    model = Concat()
    spec = PermutationSpec.from_module(model, X)
    assert spec.axes_to_perm["out.weight"] == (None, ("P_a", "P_b"))
    perms = spec.random_perms(torch.Generator().manual_seed(0))
    assert check_equivalent(model, randomised(model), spec, perms, X) < 1e-9


class Sorted(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(64, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.sort(self.a(x.flatten(1)), dim=1).values)


def test_unsupported_operation_names_the_node():
    with pytest.raises(NotImplementedError, match=r"node 'sort' \(op aten.sort"):
        PermutationSpec.from_module(Sorted(), X)


def test_wrong_example_input_is_a_value_error():
    with pytest.raises(ValueError, match="example_input"):
        PermutationSpec.from_module(MLP(), torch.rand(2, 5))
