"""The ResNet zoo architecture: shape, permutation spec, and the batched forward in both modes."""
import pytest
import torch

from deepalign import check_equivalent
from deepalign.models import ResNet, batched_forward, build_model, example_input
from deepalign.testing import random_state_dict
from deepalign.weightspace import PermutationSpec, random_permutations

CONFIG = ResNet(2, depth=8, width=0.25, out_features=3, image_size=(8, 6)).config


def randomised(model, batch_size=None, seed=0):
    """float64 weights and BatchNorm statistics far from their (0, 1) initial values."""
    gen = torch.Generator().manual_seed(seed)
    sd = random_state_dict(model, batch_size, generator=gen)
    for key in sd:
        if key.endswith("running_var"):
            sd[key] = sd[key].abs() + 0.5
        elif key.endswith("num_batches_tracked"):
            sd[key] = torch.randint(0, 100, sd[key].shape, generator=gen)
    return sd


def test_cifar_layout():
    model = ResNet(1, depth=14, width=0.5, out_features=10, image_size=(28, 28), stem_stride=2)
    sd = model.state_dict()
    assert sd["stem.0.weight"].shape == (8, 1, 3, 3) and "stem.0.bias" not in sd
    assert [len(stage) for stage in model.stages] == [2, 2, 2]
    assert sd["stages.1.0.conv1.weight"].shape == (16, 8, 3, 3)
    assert sd["stages.1.0.shortcut.0.weight"].shape == (16, 8, 1, 1)
    assert "stages.1.1.shortcut.0.weight" not in sd and "stages.0.0.shortcut.0.weight" not in sd
    assert sd["head.weight"].shape == (10, 32)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model(model.config).config == model.config


@pytest.mark.parametrize("kwargs, match", [({"depth": 10}, "depth"), ({"width": 0}, "width"),
                                           ({"stem_stride": 0}, "stem_stride")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


def test_spec_ties_residual_streams_and_preserves_the_function():
    model = build_model(CONFIG).eval()
    spec = PermutationSpec.from_module(model, example_input(CONFIG))
    # one permutation per stage's residual stream, one inside each block
    assert len(spec.perm_names) == 6
    assert spec.axes_to_perm["head.weight"][1] == spec.axes_to_perm["stages.2.0.bn2.weight"][0]
    assert spec.axes_to_perm["stem.1.running_mean"] == spec.axes_to_perm["stages.0.0.bn2.bias"]
    sd = randomised(model, batch_size=2)
    perms = random_permutations(spec.perm_sizes(sd, batched=True), batch_size=2,
                                generator=torch.Generator().manual_seed(1))
    x = torch.randn(5, 2, 8, 6, dtype=torch.float64)
    assert check_equivalent(model, sd, spec, perms, x) < 1e-9


@pytest.mark.parametrize("per_model", [False, True], ids=["shared-x", "per-model-x"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_batched_forward_matches_each_module(training, per_model):
    """Outputs and the updated running statistics equal each nn.Module's, in float64."""
    model = build_model({**CONFIG, "stem_stride": 2}).double().train(training)
    stacked = randomised(model, batch_size=3)
    before = {k: v.clone() for k, v in stacked.items()}
    x = torch.randn(3, 5, 2, 8, 6, dtype=torch.float64) if per_model else \
        torch.randn(5, 2, 8, 6, dtype=torch.float64)
    out = batched_forward(model, stacked, x, per_model_inputs=per_model)
    for b in range(3):
        one = build_model(model.config).double().train(training)
        one.load_state_dict({k: v[b] for k, v in before.items()})
        torch.testing.assert_close(out[b], one(x[b] if per_model else x), rtol=1e-10, atol=1e-12)
        for key, value in one.state_dict().items():
            torch.testing.assert_close(stacked[key][b], value, rtol=1e-10, atol=1e-12, msg=key)
    changed = [k for k in stacked if not torch.equal(stacked[k], before[k])]
    assert bool(changed) == training  # eval mode leaves the buffers alone


def test_train_mode_needs_buffers_it_can_update():
    model = build_model(CONFIG).train()
    stacked = {k: v.expand(2, *v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="stem.1: .*contiguous"):
        batched_forward(model, stacked, torch.randn(4, 2, 8, 6))
    model.eval()
    assert batched_forward(model, stacked, torch.randn(4, 2, 8, 6)).shape == (2, 4, 3)
