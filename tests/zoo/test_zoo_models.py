"""Zoo architectures: parameter names, config round trip and the batched functional forward."""
import pytest
import torch

from deepalign.models import CNN, MLP, SIREN, batched_forward, build_model, example_input

ARCHS = [MLP(12, [5, 4], 3), CNN(2, [4, 6, 5], 3, image_size=(8, 6)), SIREN(2, [7, 7], 3)]
INPUTS = {"mlp": (1, 3, 4), "cnn": (2, 8, 6), "siren": (2,)}


def test_parameter_names_follow_execution_order():
    assert list(MLP(64, [32, 16], 10).state_dict()) == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
        "layers.2.weight", "layers.2.bias"]
    cnn = CNN(1, [16, 32, 32], 10, image_size=(8, 8))
    assert [k for k in cnn.state_dict()][-2:] == ["head.weight", "head.bias"]
    assert cnn.state_dict()["convs.1.weight"].shape == (32, 16, 3, 3)
    assert cnn.head.in_features == 32 * 2 * 2  # 8x8 pooled after convs 0 and 1
    assert cnn.config["pool"] == [0, 1]


@pytest.mark.parametrize("model", ARCHS, ids=lambda m: m.config["arch"])
def test_config_round_trip(model):
    rebuilt = build_model(model.config)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(4, *INPUTS[model.config["arch"]])
    torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("per_model", [False, True], ids=["shared-x", "per-model-x"])
@pytest.mark.parametrize("model", ARCHS, ids=lambda m: m.config["arch"])
def test_batched_forward_matches_a_loop_in_float64(model, per_model):
    model = build_model(model.config).double()
    sds = [build_model(model.config).double().state_dict() for _ in range(3)]
    stacked = {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}
    shape = INPUTS[model.config["arch"]]
    x = torch.randn(3, 5, *shape, dtype=torch.float64) if per_model else \
        torch.randn(5, *shape, dtype=torch.float64)
    out = batched_forward(model, stacked, x, per_model_inputs=per_model)
    for b, sd in enumerate(sds):
        model.load_state_dict(sd)
        torch.testing.assert_close(out[b], model(x[b] if per_model else x), rtol=1e-12, atol=1e-12)


def test_batched_forward_is_differentiable():
    model = MLP(4, [3], 2).double()
    stacked = {k: torch.randn(2, *v.shape, dtype=torch.float64, requires_grad=True)
               for k, v in model.state_dict().items()}
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *ts: batched_forward(model, dict(zip(stacked, ts)), x),
                                    tuple(stacked.values()))


def test_batched_forward_rejects_mismatched_weights():
    model = MLP(4, [3], 2)
    stacked = {k: torch.stack([v, v]) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="missing .*layers.1.bias"):
        batched_forward(model, {k: v for k, v in stacked.items() if k != "layers.1.bias"},
                        torch.randn(3, 4))
    stacked["layers.0.bias"] = stacked["layers.0.bias"][:1]
    with pytest.raises(ValueError, match="disagree on the batch size"):
        batched_forward(model, stacked, torch.randn(3, 4))


@pytest.mark.parametrize("make, match", [
    (lambda: MLP(0, [3], 2), "in_features"),
    (lambda: MLP(4, [3, -1], 2), "hidden"),
    (lambda: CNN(1, [], 10), "at least one"),
    (lambda: CNN(1, [4, 4], 10, image_size=(2, 2), pool=[0, 1]), "shrink"),
    (lambda: CNN(1, [4], 10, pool=[3]), "pool indices"),
    (lambda: SIREN(2, [8], 1, w0=float("nan")), "w0"),
    (lambda: build_model({"arch": "vgg"}), "unknown arch"),
    (lambda: build_model({"arch": "mlp", "widths": 3}), "does not fit MLP"),
    (lambda: build_model([1, 2]), "dict with an 'arch'"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_siren_fits_the_paper_shape():
    siren = SIREN()
    assert [tuple(v.shape) for v in siren.state_dict().values()] == [
        (32, 2), (32,), (32, 32), (32,), (1, 32), (1,)]
    with torch.no_grad():
        for p in siren.parameters():
            p.zero_()
    assert torch.equal(siren(torch.rand(5, 2)), torch.full((5, 1), 0.5))


@pytest.mark.parametrize("model", ARCHS, ids=lambda m: m.config["arch"])
def test_example_input_runs_through_the_model(model):
    x = example_input(model.config)
    assert x.shape[0] == 1 and model(x).shape == (1, model.config["out_features"])


def test_example_input_names_what_is_missing():
    with pytest.raises(ValueError, match="image_size"):
        example_input({"arch": "cnn", "in_channels": 1})
