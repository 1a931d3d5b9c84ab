"""BatchNorm reset against PyTorch's own re-estimation, and the errors of bad input."""
import math

import pytest
import torch
from torch import nn

from correction_nets import BatchNormResNet, LayerNormMLP, PlainMLP, inputs_for, random_state
from deepalign import repair, reset_bn


def manual_reset(model, sd, x) -> dict:
    """What users write by hand: training mode, cumulative averages, one batch of all data."""
    model.load_state_dict(sd)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(x)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_reset_bn_equals_a_manual_re_estimation():
    model = BatchNormResNet().double()
    sd = random_state(model, 0)
    x = inputs_for(model, 120, 1)
    got = reset_bn(model, sd, x)
    want = manual_reset(BatchNormResNet().double(), sd, x)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    assert not torch.equal(got["bn1.running_var"], sd["bn1.running_var"])
    assert model.training  # the caller's module keeps its mode


def test_reset_bn_on_a_batch_of_networks():
    model = BatchNormResNet().double()
    sds = [random_state(model, 10 + i) for i in range(3)]
    x = inputs_for(model, 40, 2)
    stacked = reset_bn(model, {k: torch.stack([s[k] for s in sds]) for k in sds[0]}, x)
    for i, sd in enumerate(sds):
        one = reset_bn(model, sd, x)
        for k in one:
            torch.testing.assert_close(stacked[k][i], one[k], rtol=1e-10, atol=1e-12)


def test_reset_bn_needs_a_batchnorm():
    model = LayerNormMLP().double()
    with pytest.raises(ValueError, match="no BatchNorm"):
        reset_bn(model, random_state(model, 0), inputs_for(model, 10, 0))


@pytest.mark.parametrize("lam", [-0.1, 1.5, math.nan, "half"])
def test_lam_outside_the_unit_interval_is_refused(lam):
    model = PlainMLP().double()
    sd = random_state(model, 0)
    with pytest.raises(ValueError, match="lam must be a number in"):
        repair(model, sd, sd, lam, inputs_for(model, 10, 0))


def test_bad_data_is_named():
    model = PlainMLP().double()
    sd = random_state(model, 0)
    with pytest.raises(ValueError, match="data is empty"):
        repair(model, sd, sd, 0.5, torch.zeros(0, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="data is empty"):
        repair(model, sd, sd, 0.5, [])
    with pytest.raises(ValueError, match="^data: example_input does not run"):
        repair(model, sd, sd, 0.5, torch.zeros(10, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        repair(model, sd, sd, 0.5, torch.full((10, 5), math.nan, dtype=torch.float64))
    for wrong in (3, "x.pt", {"x": torch.zeros(4, 5)}):
        with pytest.raises(TypeError, match="data must be"):
            repair(model, sd, sd, 0.5, wrong)


def test_a_model_without_hidden_channels_is_refused():
    model = nn.Sequential(nn.Linear(5, 3)).double()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no correctable layer"):
        repair(model, sd, sd, 0.5, torch.randn(10, 5, dtype=torch.float64))


def test_a_layer_with_nowhere_to_fold_the_shift_is_named():
    model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 3)).double()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="layer '0' \\(Linear\\) has no bias"):
        repair(model, sd, sd, 0.5, torch.randn(10, 5, dtype=torch.float64))
