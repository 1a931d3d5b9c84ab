"""DeepAlign's public API: perms in the baselines' format, save/load, input errors."""
import pytest
import torch

from deepalign import PermutationSpec, permute
from deepalign.models import CNN, MLP
from deepalign.nn import DeepAlign, WeightLayout
from deepalign.testing import random_state_dict
from deepalign.weightspace import BlockGroup, random_permutations

SMALL = {"hidden": 8, "n_hidden": 1, "out_features": 8}


@pytest.fixture
def mlp():
    model = MLP(10, hidden=(6, 5), out_features=3)
    return model, PermutationSpec.from_module(model, torch.zeros(1, 10))


def test_align_recovers_a_permutation_and_feeds_permute(mlp):
    model, spec = mlp
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), **SMALL).double().eval()
    a = random_state_dict(model, 4, generator=gen)
    t = random_permutations(spec.perm_sizes(a, batched=True), 4, gen)
    b = permute(a, spec, t)
    perms = aligner.align(a, b)
    assert set(perms) == set(spec.perm_names)
    assert all(p.dtype == torch.int64 and p.shape == (4, spec.perm_sizes(a, True)[k])
               for k, p in perms.items())
    back = permute(b, spec, perms)
    for k in a:
        torch.testing.assert_close(back[k], a[k])
    plans = aligner.soft_align(a, b, n_iters=200)
    for k, p in plans.items():
        assert p.shape == (4, perms[k].shape[1], perms[k].shape[1])
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
        torch.testing.assert_close(p.sum(-2), torch.ones_like(p.sum(-2)), atol=1e-2, rtol=0)


def test_save_load_round_trip(mlp, tmp_path):
    model, spec = mlp
    aligner = DeepAlign.from_spec(spec, model.state_dict(), "paper", **SMALL)
    with torch.no_grad():
        aligner.scale.fill_(2.5)
    aligner.eval()
    aligner.save(tmp_path / "aligner.pt")
    loaded = DeepAlign.load(tmp_path / "aligner.pt")
    assert loaded.config == aligner.config and not loaded.training
    a, b = random_state_dict(model, 2, dtype=torch.float32), random_state_dict(model, 2,
                                                                                dtype=torch.float32)
    for k, v in aligner(a, b).items():
        torch.testing.assert_close(loaded(a, b)[k], v, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligner.pt"]  # no temp files left


def test_weight_similarity_round_trips_and_old_files_load_without_it(mlp, tmp_path):
    model, spec = mlp
    aligner = DeepAlign.from_spec(spec, model.state_dict(), weight_similarity=True, **SMALL)
    with torch.no_grad():
        aligner.weight_similarity.log_alpha.fill_(0.7)
    aligner.eval().save(tmp_path / "ws.pt")
    loaded = DeepAlign.load(tmp_path / "ws.pt")
    assert loaded.config.weight_similarity and loaded.config == aligner.config
    a, b = random_state_dict(model, 2, dtype=torch.float32), random_state_dict(model, 2,
                                                                                dtype=torch.float32)
    for k, v in aligner(a, b).items():
        torch.testing.assert_close(loaded(a, b)[k], v, rtol=0, atol=0)
    # a file written before the option existed has no such config field: it reads as off
    plain = DeepAlign.from_spec(spec, model.state_dict(), **SMALL).eval()
    plain.save(tmp_path / "plain.pt")
    payload = torch.load(tmp_path / "plain.pt", weights_only=True)
    del payload["config"]["weight_similarity"]
    torch.save(payload, tmp_path / "old.pt")
    old = DeepAlign.load(tmp_path / "old.pt")
    assert not old.config.weight_similarity and old.weight_similarity is None


def test_weight_similarity_term_trains_end_to_end(mlp):
    model, spec = mlp
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), weight_similarity=True,
                                  **SMALL).train()
    gen = torch.Generator().manual_seed(1)
    a = random_state_dict(model, 3, generator=gen, dtype=torch.float32)
    b = random_state_dict(model, 3, generator=gen, dtype=torch.float32)
    emb_a, emb_b = aligner.embed(a, b)
    plans = aligner.plans(emb_a, emb_b, n_iters=5)
    sum(p.diagonal(dim1=-2, dim2=-1).sum() for p in plans.values()).backward()
    grad = aligner.weight_similarity.log_alpha.grad
    # the second set's term sees the first set's plan: both weights get gradient
    assert grad is not None and (grad != 0).all()
    assert aligner.scale.grad is not None


def test_weight_similarity_under_bfloat16_reads_full_precision_weights(mlp):
    model, spec = mlp
    aligner = DeepAlign.from_spec(spec, model.state_dict(), weight_similarity=True,
                                  **SMALL).eval()
    gen = torch.Generator().manual_seed(2)
    a = random_state_dict(model, 2, generator=gen, dtype=torch.float32)
    emb, = aligner.embed(a, dtype=torch.bfloat16)
    weights, _ = emb.layers
    assert all(w.dtype == torch.float32 for w in weights)
    torch.testing.assert_close(weights[0][..., 0], a["layers.0.weight"], rtol=0, atol=0)


def test_load_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a DeepAlign file"):
        DeepAlign.load(tmp_path / "other.pt")


def test_parameter_count_does_not_grow_quadratically_with_depth():
    def count(depth):
        model = MLP(16, hidden=(8,) * depth, out_features=4)
        spec = PermutationSpec.from_module(model, torch.zeros(1, 16))
        aligner = DeepAlign.from_spec(spec, model.state_dict())
        return sum(p.numel() for p in aligner.parameters()), len(list(aligner.modules()))

    (p2, m2), (p4, m4), (p8, m8) = count(2), count(4), count(8)
    assert m2 == m4 == m8  # modules per equivariant layer do not depend on the layer count
    assert p8 - p4 == pytest.approx(2 * (p4 - p2), rel=0.05)  # linear growth


def _downsampling_aligner(width=12):
    model = MLP(width, hidden=(6, 5), out_features=3)
    spec = PermutationSpec.from_module(model, torch.zeros(1, width))
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), downsample=4, **SMALL)
    return aligner.double().eval(), model


def _shuffle_inputs(sd, gen):
    # a relabelling of the (never permuted) input pixels: a different function, not a symmetry
    cols = torch.randperm(sd["layers.0.weight"].shape[-1], generator=gen)
    return {**sd, "layers.0.weight": sd["layers.0.weight"][..., cols]}


def test_downsampling_sees_which_input_each_weight_reads():
    aligner, model = _downsampling_aligner()
    gen = torch.Generator().manual_seed(1)
    sd = random_state_dict(model, 3, generator=gen)
    shuffled = _shuffle_inputs(sd, gen)
    emb, emb_shuffled = aligner.embed(sd, shuffled)
    assert max((e - f).abs().max() for e, f in zip(emb, emb_shuffled)) > 1e-3
    with torch.no_grad():  # value-only attention pooling is blind to the input order
        for layer in aligner.modules():
            if hasattr(layer, "projection"):
                layer.projection.zero_()
    emb, emb_shuffled = aligner.embed(sd, shuffled)
    torch.testing.assert_close(emb, emb_shuffled)


def test_files_from_before_the_projection_load_with_a_zero_projection():
    aligner, model = _downsampling_aligner()
    old = {k: v for k, v in aligner.state_dict().items() if not k.endswith("projection")}
    assert len(old) < len(aligner.state_dict())
    fresh, _ = _downsampling_aligner()
    fresh.load_state_dict(old)
    projections = [v for k, v in fresh.state_dict().items() if k.endswith("projection")]
    assert projections and all((p == 0).all() for p in projections)


def test_cnn_head_is_folded_per_channel():
    model = CNN(in_channels=1, channels=(4, 6), out_features=3, image_size=(8, 8), pool=[0, 1])
    spec = PermutationSpec.from_module(model, torch.zeros(1, 1, 8, 8))
    layout = WeightLayout.from_spec(spec, model.state_dict())
    assert [(s.d_out, s.d_in, s.taps) for s in layout.slots] == [(4, 1, 9), (6, 4, 9), (3, 6, 4)]
    assert layout.taps == 9 and layout.set_sizes == [1, 4, 6, 3]


def test_bad_inputs_raise_clear_errors(mlp):
    model, spec = mlp
    sd = model.state_dict()
    aligner = DeepAlign.from_spec(spec, sd, **SMALL)
    a = random_state_dict(model, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="both be single networks or batches"):
        aligner(a, {k: v[0] for k, v in a.items()})
    with pytest.raises(ValueError, match="layers.0.weight"):
        aligner({**a, "layers.0.weight": torch.zeros(2, 7, 10)}, a)
    with pytest.raises(ValueError, match="unknown encoder options"):
        DeepAlign.from_spec(spec, sd, widht=3)
    with pytest.raises(ValueError, match="unknown preset"):
        DeepAlign.from_spec(spec, sd, "huge")
    residual = PermutationSpec({"a.weight": ("P", None), "b.weight": ("P", "P"),
                                "c.weight": (None, "P")})
    shapes = {"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(4, 4),
              "c.weight": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match="chains"):
        DeepAlign.from_spec(residual, shapes)


def test_check_compatible(mlp):
    model, spec = mlp
    aligner = DeepAlign.from_spec(spec, model.state_dict(), **SMALL)
    aligner.check_compatible(spec, model.state_dict())
    other = MLP(10, hidden=(6, 4), out_features=3)
    other_spec = PermutationSpec.from_module(other, torch.zeros(1, 10))
    with pytest.raises(ValueError, match="built for layers"):
        aligner.check_compatible(other_spec, other.state_dict())


def test_perms_initialise_sinkhorn_rebasin(mlp):
    from deepalign import sinkhorn_rebasin

    model, spec = mlp
    gen = torch.Generator().manual_seed(3)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), **SMALL).eval()
    a = random_state_dict(model, dtype=torch.float32, generator=gen)
    b = random_state_dict(model, dtype=torch.float32, generator=gen)
    init = aligner.align(a, b)
    data = (torch.randn(16, 10, generator=gen), torch.randint(3, (16,), generator=gen))
    out = sinkhorn_rebasin(model, a, b, spec, data, init=init, n_steps=2, batch_size=8)
    assert out is not None


@pytest.mark.parametrize("config", ["default", "paper"])
def test_bfloat16_encoder_tracks_float32_and_trains_the_float32_weights(mlp, config):
    model, spec = mlp
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), config, **SMALL).eval()
    gen = torch.Generator().manual_seed(1)
    a = random_state_dict(model, 3, generator=gen, dtype=torch.float32)
    b = random_state_dict(model, 3, generator=gen, dtype=torch.float32)
    full = aligner.embed(a, b)
    mixed = aligner.embed(a, b, dtype=torch.bfloat16)
    for f_set, m_set in zip(full, mixed):
        for f, m in zip(f_set, m_set):
            assert m.dtype == torch.float32
            # unit vectors times the scale: bfloat16 keeps ~3 significant digits
            cos = torch.nn.functional.cosine_similarity(f, m, dim=-1)
            assert cos.min() > 0.99, cos.min()
    aligner.train()
    reached = []
    for dtype in (None, torch.bfloat16):
        aligner.zero_grad(set_to_none=True)
        emb_a, emb_b = aligner.embed(a, b, dtype=dtype)
        sum((x @ y.mT).logsumexp(-1).sum() for x, y in zip(emb_a, emb_b)).backward()
        reached.append({n for n, p in aligner.named_parameters() if p.grad is not None})
    assert reached[1] == reached[0] and len(reached[0]) > 10
    for name, p in aligner.named_parameters():
        if p.grad is not None:
            assert p.dtype == p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all(), name


def test_files_with_the_readout_layers_old_embeddings_still_load(mlp):
    model, spec = mlp
    aligner = DeepAlign.from_spec(spec, model.state_dict(), **SMALL)
    last = f"encoder.layers.{len(aligner.encoder.layers) - 1}."
    old = dict(aligner.state_dict())
    old[last + "pos_in"], old[last + "pos_out"] = torch.randn(10, 24), torch.randn(3, 24)
    fresh = DeepAlign.from_spec(spec, model.state_dict(), **SMALL)
    fresh.load_state_dict(old)  # strict: every other key must still match
    for k, v in aligner.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**old, "encoder.layers.0.unknown": torch.zeros(1)})


@pytest.mark.parametrize("training", [False, True])
def test_chunked_encoding_changes_nothing(mlp, monkeypatch, training):
    import deepalign.nn._deepalign as module
    model, spec = mlp
    torch.manual_seed(0)
    aligner = DeepAlign.from_spec(spec, model.state_dict(), **SMALL).double().train(training)
    gen = torch.Generator().manual_seed(3)
    a, b = random_state_dict(model, 7, generator=gen), random_state_dict(model, 7, generator=gen)
    whole = aligner(a, b)
    calls = []
    encode = aligner.encoder.forward
    monkeypatch.setattr(aligner.encoder, "forward", lambda *x: calls.append(1) or encode(*x))
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 1)  # one network per chunk in eval mode
    chunked = aligner(a, b)
    # training keeps one batch: BatchNorm's batch statistics span all networks
    assert len(calls) == (1 if training else 14)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


def test_dws_layout_refuses_structured_specs(mlp):
    model, spec = mlp[0], mlp[1]
    name = spec.perm_names[0]
    grouped = PermutationSpec(spec.axes_to_perm, spec.perm_sizes(model.state_dict()),
                              [BlockGroup("G", "groups", 2, (name,))])
    with pytest.raises(NotImplementedError, match="DWS encoder.*block group 'G'"):
        WeightLayout.from_spec(grouped, model.state_dict())
