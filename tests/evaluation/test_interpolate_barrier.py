"""interpolate, barrier/AUC definitions, and loss_barrier against a model-by-model loop."""
import pytest
import torch
import torch.nn.functional as F

from alignment_nets import CNN, MLP
from deepalign.evaluation import (barrier_from_losses, interpolate, loss_barrier,
                                  plot_barrier_curves)


def sd_of(model_cls, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    model = model_cls().to(dtype)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for key in sd:
        if "running_var" in key:
            sd[key].uniform_(0.5, 2.0)
        elif "running_mean" in key:
            sd[key].normal_()
    return model, sd


def test_interpolate_endpoints_midpoint_and_grid():
    _, a = sd_of(CNN, 0)
    _, b = sd_of(CNN, 1)
    assert all(torch.equal(interpolate(a, b, 0.0)[k], a[k]) for k in a)
    torch.testing.assert_close(interpolate(a, b, 1.0), b)
    mid = interpolate(a, b, 0.5)
    torch.testing.assert_close(mid["fc.weight"], (a["fc.weight"] + b["fc.weight"]) / 2)
    grid = interpolate(a, b, torch.tensor([0.0, 0.25, 1.0]))
    assert grid["conv0.weight"].shape == (3, *a["conv0.weight"].shape)
    torch.testing.assert_close(grid["bn0.bias"][1], 0.75 * a["bn0.bias"] + 0.25 * b["bn0.bias"])
    assert torch.equal(grid["bn0.num_batches_tracked"][2], a["bn0.num_batches_tracked"])


def test_interpolate_rejects_mismatches():
    _, a = sd_of(MLP, 0)
    b = dict(a, **{"fc1.weight": torch.zeros(3, 3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="fc1.weight"):
        interpolate(a, b, 0.5)
    with pytest.raises(ValueError, match="keys"):
        interpolate(a, {k: v for k, v in a.items() if k != "fc0.bias"}, 0.5)


def test_barrier_and_auc_definitions():
    lambdas = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    barrier, auc, psi = barrier_from_losses(torch.tensor([1.0, 2.5, 2.0], dtype=torch.float64),
                                            lambdas)
    torch.testing.assert_close(psi, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert barrier.item() == pytest.approx(1.0) and auc.item() == pytest.approx(0.5)
    barrier, auc, _ = barrier_from_losses(torch.tensor([[1.0, 0.5, 1.0]], dtype=torch.float64),
                                          lambdas)
    assert barrier.item() == 0.0 and auc.item() == 0.0  # a dip below the line clips to 0


@pytest.mark.parametrize("model_cls", [MLP, CNN])
def test_loss_barrier_matches_one_model_at_a_time(model_cls):
    model, a = sd_of(model_cls, 0)
    _, b = sd_of(model_cls, 1)
    _, b2 = sd_of(model_cls, 2)
    x, y = torch.rand(40, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (40,))
    stacked_a = {k: torch.stack([a[k], a[k]]) for k in a}
    stacked_b = {k: torch.stack([b[k], b2[k]]) for k in a}
    result = loss_barrier(model, stacked_a, stacked_b, (x, y), n_points=5, batch_size=16,
                          chunk_size=3)
    model.eval()
    for pair, other in enumerate([b, b2]):
        expected = []
        for lam in result.lambdas.tolist():
            model.load_state_dict(interpolate(a, other, lam))
            with torch.no_grad():
                expected.append(F.cross_entropy(model(x), y).item())
        torch.testing.assert_close(result.losses[pair], torch.tensor(expected, dtype=torch.float64))
        single = loss_barrier(model, a, other, (x, y), n_points=5)
        torch.testing.assert_close(single.barrier, result.barrier[pair])
        torch.testing.assert_close(single.auc, result.auc[pair])


def test_identical_endpoints_have_no_barrier():
    model, a = sd_of(MLP, 0)
    result = loss_barrier(model, a, a, (torch.rand(10, 1, 8, 8, dtype=torch.float64),
                                        torch.randint(0, 10, (10,))), n_points=4)
    assert result.barrier.item() == pytest.approx(0.0, abs=1e-12)
    assert result.losses.shape == (4,)


def test_bad_inputs_name_the_problem():
    model, a = sd_of(MLP, 0)
    data = (torch.rand(10, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (10,)))
    nan = dict(a, **{"fc1.bias": torch.full_like(a["fc1.bias"], float("nan"))})
    with pytest.raises(ValueError, match="fc1.bias.*NaN"):
        loss_barrier(model, a, nan, data)
    narrow = dict(a, **{"fc2.bias": torch.zeros(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="fc2.bias"):
        loss_barrier(model, a, narrow, data)
    with pytest.raises(ValueError, match="inputs of shape"):
        loss_barrier(model, a, a, (torch.rand(10, 1, 5, 5, dtype=torch.float64), data[1]))


def test_plot_writes_a_png(tmp_path):
    model, a = sd_of(MLP, 0)
    _, b = sd_of(MLP, 1)
    data = (torch.rand(10, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (10,)))
    result = loss_barrier(model, a, b, data, n_points=3)
    path = plot_barrier_curves({"naive": result}, tmp_path / "curves" / "lmc.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_pair_targets_score_each_pair_against_its_own():
    """INR pairs: pair b is scored against y[b]; chunks and sample batches mix pairs."""
    from deepalign.evaluation import squared_error
    from deepalign.models import SIREN

    torch.manual_seed(0)
    nets = [SIREN(2, [6, 6], 1).double().state_dict() for _ in range(6)]
    a = {k: torch.stack([n[k] for n in nets[:3]]) for k in nets[0]}
    b = {k: torch.stack([n[k] for n in nets[3:]]) for k in nets[0]}
    x = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
    y = torch.rand(3, 10, 1, dtype=torch.float64)
    got = loss_barrier(SIREN(2, [6, 6], 1), a, b, (x, y), n_points=4, loss_fn=squared_error,
                       targets_per_pair=True, chunk_size=5, batch_size=3)
    for p in range(3):
        one = loss_barrier(SIREN(2, [6, 6], 1), {k: v[p] for k, v in a.items()},
                           {k: v[p] for k, v in b.items()}, (x, y[p]), n_points=4,
                           loss_fn=squared_error)
        torch.testing.assert_close(got.losses[p], one.losses)
    assert not torch.allclose(got.losses[0], got.losses[1])
    with pytest.raises(ValueError, match=r"targets_per_pair needs y of shape \(3, N"):
        loss_barrier(SIREN(2, [6, 6], 1), a, b, (x, y[:2]), targets_per_pair=True,
                     loss_fn=squared_error)
