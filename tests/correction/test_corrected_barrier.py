"""Corrections inside loss_barrier and merge, on a pair of MLPs trained on digits."""
import pytest
import torch

from deepalign import PermutationSpec, loss_barrier, merge, permute, repair, weight_matching
from deepalign.data import load_dataset
from deepalign.models import MLP, build_model
from deepalign.zoo._train import TrainSettings, train_classifiers


@pytest.fixture(scope="module")
def trained_pair():
    data = load_dataset("digits")
    config = MLP(64, [48, 48, 48], 10).config
    stacked, _ = train_classifiers(config, data, [1, 2], TrainSettings(epochs=3))
    model = build_model(config)
    spec = PermutationSpec.from_module(model, torch.zeros(1, 64))
    sd_a, sd_b = ({k: v[i] for k, v in stacked.items()} for i in (0, 1))
    aligned = permute(sd_b, spec, weight_matching(sd_a, sd_b, spec))
    return model, spec, sd_a, sd_b, aligned, data


def test_repair_lowers_the_barrier_of_a_trained_pair(trained_pair):
    model, _, sd_a, _, aligned, data = trained_pair
    test, train = (data.X_test, data.y_test), data.X_train[:400]
    plain = loss_barrier(model, sd_a, aligned, test, n_points=9)
    fixed = loss_barrier(model, sd_a, aligned, test, n_points=9, correction="repair",
                         correction_data=train)
    assert fixed.barrier < 0.7 * plain.barrier
    # REPAIR leaves the endpoints as they are
    torch.testing.assert_close(fixed.losses[[0, -1]], plain.losses[[0, -1]], rtol=1e-4, atol=1e-5)
    # the midpoint on the curve is deepalign.repair's merged network
    mid = repair(model, sd_a, aligned, 0.5, train)
    at_mid = loss_barrier(model, mid, mid, test, n_points=2)
    torch.testing.assert_close(fixed.losses[4], at_mid.losses[0], rtol=1e-4, atol=1e-5)


def test_the_accuracy_barrier_is_the_drop_below_the_line(trained_pair):
    model, _, sd_a, sd_b, _, data = trained_pair
    curve = loss_barrier(model, sd_a, sd_b, (data.X_test, data.y_test), n_points=5)
    acc = curve.accuracies
    assert acc.shape == (5,) and bool(((acc >= 0) & (acc <= 1)).all())
    line = (1 - curve.lambdas) * acc[0] + curve.lambdas * acc[-1]
    torch.testing.assert_close(curve.acc_barrier, (line - acc).max().clamp(min=0))
    assert curve.acc_barrier > 0.05  # unaligned networks lose accuracy in between
    # regression targets have no accuracy
    x = data.X_test[:20]
    plain = loss_barrier(model, sd_a, sd_b, (x, torch.zeros(20, 10)), n_points=3,
                         loss_fn=lambda out, y: (out - y).pow(2).mean(1))
    assert plain.accuracies is None and plain.acc_barrier is None


def test_a_correction_needs_its_data(trained_pair):
    model, _, sd_a, _, aligned, data = trained_pair
    with pytest.raises(ValueError, match="needs correction_data"):
        loss_barrier(model, sd_a, aligned, (data.X_test, data.y_test), correction="repair")
    with pytest.raises(ValueError, match="correction must be None or one of"):
        loss_barrier(model, sd_a, aligned, (data.X_test, data.y_test), correction="rescale",
                     correction_data=data.X_train)


def test_merge_with_repair_is_repair_at_the_midpoint(trained_pair):
    model, spec, sd_a, sd_b, _, data = trained_pair
    x = data.X_train[:300]
    merged = merge([sd_a, sd_b], spec, correction="repair", model=model, data=x)
    aligned = permute(sd_b, spec, {k: p[1] for k, p in merged.perms.items()})
    want = repair(model, sd_a, aligned, 0.5, x)
    for k in want:
        torch.testing.assert_close(merged.state_dict[k], want[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs the architecture"):
        merge([sd_a, sd_b], spec, correction="repair")
