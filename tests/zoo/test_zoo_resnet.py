"""ResNet zoos: BatchNorm buffers trained by the forward, stored, evaluated in eval mode, resumed."""
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from deepalign.baselines import activation_matching, sinkhorn_rebasin, weight_matching
from deepalign.cli import main
from deepalign.data import load_dataset
from deepalign.evaluation import loss_barrier
from deepalign.models import ResNet
from deepalign.weightspace import invert_permutations, permute, random_permutations
from deepalign.zoo import TrainSettings, Zoo, train_classifiers, train_zoo

from _tiny_zoo import interrupt_second_chunk, train_alone

ARCH = ResNet(1, depth=8, width=0.25, out_features=10, image_size=(8, 8)).config
SETTINGS = TrainSettings(epochs=1, batch_size=64, lr=(1e-3, 1e-2))
SUBSET = 200  # 4 steps of 64 images


def resnet_zoo(out, **kwargs):
    return train_zoo(str(out), "digits", ARCH, 4, SETTINGS, seed=2, chunk_size=2,
                     train_subset=SUBSET, progress=False, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return resnet_zoo(tmp_path_factory.mktemp("resnet"))


def test_batched_training_equals_training_each_model_alone():
    """Parameters by AdamW, running statistics and batch counts by the train-mode forward."""
    data = load_dataset("digits")
    data = dataclasses.replace(data, X_train=data.X_train[:SUBSET], y_train=data.y_train[:SUBSET])
    stacked, _ = train_classifiers(ARCH, data, [5, 6], SETTINGS)
    for b, seed in enumerate([5, 6]):
        alone = train_alone(ARCH, data, seed, SETTINGS)
        assert list(alone) == list(stacked)
        for k, v in alone.items():
            torch.testing.assert_close(stacked[k][b], v, rtol=1e-3, atol=1e-4, msg=k)
    assert torch.equal(stacked["stem.1.num_batches_tracked"], torch.tensor([4, 4]))


def test_zoo_stores_buffers_and_records_eval_mode_metrics(reference):
    assert reference.manifest["training"]["train_subset"] == SUBSET
    sd = reference.state_dict(3)
    assert set(sd) == set(reference.keys) == set(ResNet(**{k: v for k, v in ARCH.items()
                                                            if k != "arch"}).state_dict())
    assert int(sd["stages.1.0.bn1.num_batches_tracked"]) == 4
    model = reference.build_model()
    assert not model.training
    model.load_state_dict(sd)
    data = load_dataset("digits")
    with torch.no_grad():
        logits = model(data.X_test)
    record = reference.records[3]
    assert record["test_acc"] == pytest.approx((logits.argmax(1) == data.y_test).double().mean())
    assert record["test_loss"] == pytest.approx(F.cross_entropy(logits, data.y_test).item(),
                                                 rel=1e-5)


def test_resume_after_a_kill_and_refuse_another_subset(reference, tmp_path, monkeypatch):
    interrupt_second_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        resnet_zoo(tmp_path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="different training"):
        train_zoo(str(tmp_path), "digits", ARCH, 4, SETTINGS, seed=2, chunk_size=2,
                  progress=False)
    resumed = resnet_zoo(tmp_path)
    a, b = reference.stacked(), resumed.stacked()
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed.records == reference.records


def test_weight_matching_recovers_a_planted_permutation(reference):
    spec = reference.spec()
    a = reference.state_dict(0)
    planted = random_permutations(spec.perm_sizes(a), 1, torch.Generator().manual_seed(3))
    b = permute(a, spec, planted)
    found = weight_matching(a, b, spec)
    expected = invert_permutations(planted)
    for name in spec.perm_names:
        assert torch.equal(found[name], expected[name]), name


def test_alignment_and_barriers_run_a_train_mode_module_in_eval_mode(reference):
    """BatchNorm uses the running statistics; the caller's module and weights stay as they were."""
    model, eval_model = reference.build_model().train(), reference.build_model()
    spec = reference.spec()
    a, b = reference.state_dict(0), reference.state_dict(1)
    kept = {k: v.clone() for k, v in {**a, **b}.items()}
    data = load_dataset("digits")
    x, y = data.X_test[:64], data.y_test[:64]
    results = [(activation_matching(m, a, b, spec, x),
                sinkhorn_rebasin(m, a, b, spec, (x, y), n_steps=2),
                loss_barrier(m, a, b, (x, y), n_points=3).losses)
               for m in (model, eval_model)]
    assert model.training and not eval_model.training
    assert all(torch.equal(kept[k], v) for k, v in {**a, **b}.items())
    (am, sr, losses), (am_eval, sr_eval, losses_eval) = results
    assert torch.equal(losses, losses_eval)
    assert all(torch.equal(am[k], am_eval[k]) and torch.equal(sr[k], sr_eval[k]) for k in am)


def test_cli_trains_a_resnet_zoo(tmp_path):
    assert main(["zoo", "--dataset", "digits", "--arch", "resnet", "--depth", "8", "--width",
                 "0.25", "--stem-stride", "2", "--train-subset", "100", "--count", "1",
                 "--epochs", "1", "--batch-size", "50", "--lr-schedule", "cosine",
                 "--chunk-size", "1", "--val", "0",
                 "--test", "0", "--quiet", "--out", str(tmp_path)]) == 0
    zoo = Zoo(tmp_path)
    assert zoo.config["stem_stride"] == 2 and zoo.config["width"] == 0.25
    assert zoo.manifest["training"]["train_subset"] == 100
    assert zoo.manifest["training"]["lr"] == [3e-3, 3e-3]
    assert zoo.manifest["training"]["schedule"] == "cosine"
    assert sorted(os.listdir(tmp_path))[-1] == "models-0000000-0000001.safetensors"


@pytest.mark.parametrize("kwargs, match", [({"train_subset": 0}, "train_subset"),
                                           ({"train_subset": 10 ** 6}, "exceeds")])
def test_bad_subsets(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_zoo(str(tmp_path), "digits", ARCH, 1, SETTINGS, progress=False, **kwargs)
