"""Batched zoo training: determinism, resume after a kill, shards, bad inputs and quality."""
import os

import numpy as np
import pytest
import torch

from deepalign.cli import main
from deepalign.data import load_dataset
from deepalign.models import MLP, build_model
from deepalign.zoo import TrainSettings, Zoo, parse_shard, split_models, train_classifiers

from _tiny_zoo import interrupt_second_chunk, tiny_zoo, train_alone


def _same(a: Zoo, b: Zoo):
    sa, sb = a.stacked(), b.stacked()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.records == b.records and a.split == b.split


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return tiny_zoo(tmp_path_factory.mktemp("ref"))


def test_deterministic_given_the_seed(reference, tmp_path):
    _same(reference, tiny_zoo(tmp_path / "again"))
    other = tiny_zoo(tmp_path / "other", seed=4)
    key = "layers.0.weight"
    assert not torch.equal(other.stacked()[key], reference.stacked()[key])


def test_models_differ_in_init_order_and_hyper_parameters(reference):
    w = reference.stacked()["layers.0.weight"].flatten(1)
    assert torch.cdist(w, w).add(torch.eye(6) * 1e9).min() > 1.0
    assert len({r["seed"] for r in reference.records}) == 6


def test_resume_after_a_kill(reference, tmp_path, monkeypatch):
    interrupt_second_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tiny_zoo(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".lock", "manifest.json",
                                            "models-0000000-0000002.safetensors"]
    with pytest.raises(ValueError, match="incomplete .*2 of 6"):
        Zoo(tmp_path)
    assert len(Zoo(tmp_path, allow_incomplete=True).stacked()["layers.0.bias"]) == 2
    monkeypatch.undo()
    _same(reference, tiny_zoo(tmp_path))


def test_shards_fill_one_zoo(reference, tmp_path):
    assert tiny_zoo(tmp_path, shard=(1, 2)) is None
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors")) == [
        "models-0000002-0000004.safetensors"]
    _same(reference, tiny_zoo(tmp_path, shard=(0, 2)))


def test_shard_auto_reads_torchrun_env(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("auto") == (2, 3) and parse_shard("0/1") == (0, 1)


def test_resume_with_other_settings_is_refused(reference, tmp_path):
    tiny_zoo(tmp_path, count=2)
    with pytest.raises(ValueError, match="different count"):
        tiny_zoo(tmp_path, count=4)


def test_split_is_seeded_and_disjoint():
    split = split_models(100, seed=1, val=0.1, test=0.2)
    assert [len(split[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    assert sorted(sum(split.values(), [])) == list(range(100))
    assert split == split_models(100, seed=1, val=0.1, test=0.2) != split_models(100, seed=2)


@pytest.mark.parametrize("call, match", [
    (lambda p: tiny_zoo(p, count=0), "count"),
    (lambda p: tiny_zoo(p, shard=(2, 2)), "shard"),
    (lambda p: parse_shard("1-3"), "K/N"),
    (lambda p: TrainSettings(lr=(1e-2, 1e-3)), "lr"),
    (lambda p: TrainSettings(weight_decay=-1.0), "weight_decay"),
    (lambda p: TrainSettings(epochs=0), "epochs"),
    (lambda p: TrainSettings(schedule="step"), "schedule"),
    (lambda p: split_models(10, 0, val=0.6, test=0.6), "fractions"),
])
def test_bad_inputs(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path)


def test_divergence_is_an_error_not_nan():
    data = load_dataset("digits")
    with pytest.raises(FloatingPointError, match="diverged"):
        train_classifiers(MLP(64, [8], 10).config, data, [1, 2], TrainSettings(epochs=1, lr=1e30))


def test_cli_trains_and_imports(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["zoo", "--dataset", "digits", "--hidden", "8", "--count", "3", "--epochs", "1",
                 "--batch-size", "256", "--chunk-size", "3", "--quiet", "--out", str(out)]) == 0
    assert "3/3 mlp models on digits" in capsys.readouterr().out
    zoo = Zoo(out)
    assert zoo.config["hidden"] == [8] and zoo.manifest["training"]["batch_size"] == 256


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("lr, weight_decay", [((1e-3, 3e-3), (0.0, 1e-2)), (2e-3, 1e-2)],
                         ids=["per-model-hparams", "shared-hparams"])
def test_batched_training_equals_training_each_model_alone(lr, weight_decay, schedule):
    data = load_dataset("digits")
    arch = MLP(64, [16], 10).config
    settings = TrainSettings(epochs=2, lr=lr, weight_decay=weight_decay, schedule=schedule)
    stacked, _ = train_classifiers(arch, data, [11, 12, 13], settings)
    for b, seed in enumerate([11, 12, 13]):
        alone = train_alone(arch, data, seed, settings)
        for k, v in alone.items():
            torch.testing.assert_close(stacked[k][b], v, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_digits_zoo_reaches_the_issue_accuracy():
    data = load_dataset("digits")
    _, records = train_classifiers(MLP(64, [32, 32], 10).config, data, list(range(8)),
                                   TrainSettings(epochs=20))
    assert np.mean([r["test_acc"] for r in records]) >= 0.93


@pytest.mark.parametrize("arch, lr", [("mlp", 1e-3), ("cnn", 3e-3)])
def test_cli_default_lr_depends_on_the_arch(tmp_path, arch, lr):
    assert main(["zoo", "--dataset", "digits", "--arch", arch, "--hidden", "4", "--channels", "4",
                 "--count", "1", "--epochs", "1", "--batch-size", "512", "--chunk-size", "1",
                 "--val", "0", "--test", "0", "--quiet", "--out", str(tmp_path)]) == 0
    assert Zoo(tmp_path).manifest["training"]["lr"] == [lr, lr]


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match="deepalign zoo: error: shard K/N needs"):
        main(["zoo", "--dataset", "digits", "--shard", "3/2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs root="):
        main(["zoo", "--dataset", "mnist-idx", "--out", str(tmp_path)])
