"""Deep-Align's head on the graph encoder: symmetries, save/load, training on a ResNet zoo."""
import pytest
import torch

from deepalign.cli import main as cli_main
from deepalign.baselines._block_assignment import assign_perms
from deepalign.models import ResNet, ViT, build_model, example_input
from deepalign.nn import DeepAlign
from deepalign.nn.graph import GraphDeepAlign
from deepalign.testing import assert_aligner_equivariant, random_state_dict
from deepalign.training import TrainConfig, train
from deepalign.weightspace import PermutationSpec
from deepalign.zoo import TrainSettings, train_zoo

RESNET = ResNet(1, depth=8, width=0.25, out_features=10, image_size=(8, 8)).config
CNN = dict(arch="cnn", in_channels=1, channels=[4, 6], image_size=[8, 8], out_features=3)
SMALL = {"hidden": 8, "n_layers": 2, "out_features": 8}


def _pair(config, batch=2):
    model = build_model(config)
    spec = PermutationSpec.from_module(model, example_input(config))
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    return model, spec, *(random_state_dict(model, batch, generator=g) for g in gens)


@pytest.mark.parametrize("config", [RESNET, CNN], ids=["resnet", "cnn"])
def test_graph_aligner_is_equivariant_and_swap_symmetric(config):
    model, spec, a, b = _pair(config)
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), encoder="graph", **SMALL)
    assert isinstance(aligner, GraphDeepAlign) and aligner.perm_names == spec.perm_names
    assert_aligner_equivariant(aligner.double().eval(), spec, a, b,
                               generator=torch.Generator().manual_seed(2))


def test_save_load_round_trip(tmp_path):
    model, spec, a, b = _pair(RESNET)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), "graph", **SMALL).eval()
    aligner.task = {"model": RESNET}
    aligner.save(tmp_path / "graph.pt")
    loaded = DeepAlign.load(tmp_path / "graph.pt")
    assert isinstance(loaded, GraphDeepAlign) and loaded.task == {"model": RESNET}
    assert loaded.config == aligner.config
    a, b = ({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
            for sd in (a, b))
    for k, p in aligner.align(a, b).items():
        assert torch.equal(loaded.align(a, b)[k], p)
    loaded.check_compatible(spec, model.state_dict())
    cnn = build_model(CNN)
    with pytest.raises(ValueError, match="another architecture"):
        loaded.check_compatible(PermutationSpec.from_module(cnn, example_input(CNN)),
                                cnn.state_dict())


def test_input_norm_and_center():
    model, spec, a, _ = _pair(RESNET)
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), "graph", **SMALL).double().eval()
    scaled = {k: v * (1 + i) if v.is_floating_point() else v for i, (k, v) in enumerate(a.items())}
    torch.testing.assert_close(aligner.encoder(scaled), aligner.encoder(a))
    for emb in aligner.encoder(a).values():  # center: each set's embeddings sum to zero
        torch.testing.assert_close(emb.mean(dim=1), torch.zeros_like(emb[:, 0]))
    raw = DeepAlign.from_spec(spec, model.state_dict(), "graph", input_norm=False, **SMALL)
    raw.load_state_dict(aligner.state_dict())
    raw = raw.double().eval()
    assert not torch.allclose(raw.encoder(scaled)[spec.perm_names[0]],
                              raw.encoder(a)[spec.perm_names[0]])


def test_files_from_before_input_norm_and_center_load_without_them(tmp_path):
    model, spec, _, _ = _pair(RESNET)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), "graph", input_norm=False,
                                  center=False, **SMALL)
    aligner.save(tmp_path / "graph.pt")
    payload = torch.load(tmp_path / "graph.pt", weights_only=True)
    del payload["config"]["input_norm"], payload["config"]["center"]
    torch.save(payload, tmp_path / "old.pt")
    old = DeepAlign.load(tmp_path / "old.pt").encoder
    assert not old.input_norm and not old.center
    new = DeepAlign.from_spec(spec, model.state_dict(), "graph").encoder
    assert new.input_norm and new.center


def test_bad_options_are_clear_errors():
    model, spec, _, _ = _pair(CNN)
    with pytest.raises(ValueError, match=r"unknown graph encoder options \['n_hidden'\]"):
        DeepAlign.from_spec(spec, model.state_dict(), encoder="graph", n_hidden=2)
    with pytest.raises(ValueError, match="encoder must be 'dws' or 'graph'"):
        DeepAlign.from_spec(spec, model.state_dict(), encoder="gnn")


@pytest.fixture(scope="module")
def resnet_zoo(tmp_path_factory):
    settings = TrainSettings(epochs=1, batch_size=64, lr=(1e-3, 1e-2))
    return train_zoo(str(tmp_path_factory.mktemp("graph-zoo") / "zoo"), "digits", RESNET, 6,
                     settings, seed=2, chunk_size=3, train_subset=200, val=0.34, test=0.0,
                     progress=False)


def test_train_a_graph_aligner_on_a_resnet_zoo(resnet_zoo, tmp_path):
    """The DWS encoder cannot read ResNets; the graph aligner trains on them end to end."""
    config = TrainConfig(steps=2, batch_size=2, image_batch=32, eval_every=2,
                         checkpoint_every=2, val_pairs=1, val_images=64, val_points=3)
    aligner = train(resnet_zoo, str(tmp_path / "run"), "graph", config, progress=False,
                    plot=False, **SMALL)
    assert isinstance(aligner, GraphDeepAlign)
    best = DeepAlign.load(tmp_path / "run" / "best.pt")
    nets = resnet_zoo.stacked(resnet_zoo.split["val"])
    one = {k: v[:1] for k, v in nets.items()}
    two = {k: v[1:2] for k, v in nets.items()}
    perms = best.align(one, two)
    assert set(perms) == set(resnet_zoo.spec().perm_names)
    assert cli_main(["train", "--zoo", resnet_zoo.path, "--out", str(tmp_path / "cli"),
                     "--encoder", "graph", "--steps", "1", "--batch-size", "2",
                     "--image-batch", "32", "--eval-every", "1", "--val-pairs", "1",
                     "--val-images", "64", "--val-points", "3", "--hidden", "8",
                     "--graph-layers", "1", "--out-features", "8", "--no-progress"]) == 0


@pytest.fixture(scope="module")
def vit_zoo(tmp_path_factory):
    config = ViT(1, image_size=(8, 8), patch_size=4, width=8, depth=1, heads=2, hidden=8).config
    return train_zoo(str(tmp_path_factory.mktemp("graph-vit") / "zoo"), "digits", config, 6,
                     TrainSettings(epochs=1), seed=0, chunk_size=6, train_subset=200,
                     val=0.34, test=0.0, progress=False)


def test_train_a_graph_aligner_on_a_vit_zoo(vit_zoo, tmp_path):
    """Heads groups: training's supervised targets are elements of the whole symmetry group
    and ``align`` rounds each heads group hierarchically, so every perm set it returns (in
    training's validation too) is a symmetry of the network."""
    config = TrainConfig(steps=2, batch_size=2, image_batch=32, eval_every=2,
                         checkpoint_every=2, val_pairs=1, val_images=64, val_points=3)
    aligner = train(vit_zoo, str(tmp_path / "run"), "graph", config, progress=False,
                    plot=False, **SMALL).eval()
    spec = vit_zoo.spec()
    assert spec.block_groups
    nets = vit_zoo.stacked(vit_zoo.split["train"])
    a, b = ({k: v[i:i + 2] for k, v in nets.items()} for i in (0, 2))
    perms = aligner.align(a, b)
    spec.check_structure(perms)
    logits = aligner(a, b)
    expected = assign_perms(logits, spec)
    assert all(torch.equal(perms[k], expected[k]) for k in expected)
    single = aligner.round({k: v[0] for k, v in logits.items()})
    assert all(torch.equal(single[k], expected[k][0]) for k in expected)
    # a per-member assignment of the same logits would break the heads structure
    plain = DeepAlign.round(aligner, logits)
    with pytest.raises(ValueError, match="whole blocks"):
        spec.check_structure(plain)


def test_batched_resnet_forward_with_statistics_that_need_a_gradient():
    """Soft-permuted BatchNorm statistics carry a gradient in training: the batched eval
    forward writes the BatchNorm out for them, with the same values."""
    from deepalign.models import batched_forward

    model = build_model(RESNET).double().eval()
    sd = random_state_dict(model, 3, generator=torch.Generator().manual_seed(5))
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = sd[k].abs() + 0.5
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    plain = batched_forward(model, sd, x)
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in sd.items()}
    out = batched_forward(model, leaves, x)
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert leaves["stem.1.running_mean"].grad.abs().sum() > 0


def test_untrained_aligner_recovers_a_planted_permutation():
    """Equivariance makes F(v, g # v) = g whenever v's units have distinct embeddings, which
    generic weights give even untrained (the paper's Prop 5.2, for the graph encoder)."""
    from deepalign.weightspace import permute

    model, spec, a, _ = _pair(RESNET, batch=3)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), encoder="graph",
                                  **SMALL).double().eval()
    g = spec.random_perms(torch.Generator().manual_seed(7), batch_size=3,
                          sizes=spec.check(model.state_dict()))
    b = permute(a, spec, g)
    back = permute(b, spec, aligner.align(a, b))
    for k in a:
        assert torch.equal(back[k], a[k]), k


def test_eval_encodes_many_networks_in_chunks(monkeypatch):
    from deepalign.nn.graph import _align

    model, spec, a, b = _pair(CNN, batch=5)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), encoder="graph",
                                  **SMALL).double().eval()
    whole = aligner(a, b)
    monkeypatch.setattr(_align, "CHUNK_ELEMENTS", 1)  # one network per chunk
    torch.testing.assert_close(aligner(a, b), whole, rtol=1e-12, atol=1e-12)
    assert aligner.encoder.block_edge is None  # no block groups: no unused parameter
