"""The user-facing commands: evaluate (seven methods side by side) and align (files in and out)."""
import json
import os

import pytest
import torch

from deepalign import loss_barrier, permute
from deepalign._io import load_state_dict, save_state_dict
from deepalign.cli._align import align_files
from deepalign.cli._evaluate import evaluate_zoo
from deepalign.comparison import METHODS, held_out_pairs
from deepalign.data import load_dataset
from deepalign.models import MLP
from deepalign.nn import DeepAlign
from deepalign.weightspace import PermutationSpec
from deepalign.zoo import TrainSettings, train_zoo


@pytest.fixture(scope="module")
def zoo_and_aligner(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmd")
    zoo = train_zoo(str(root / "zoo"), "digits", MLP(64, [16, 16], 10).config, 16,
                    TrainSettings(epochs=3), seed=2, chunk_size=16, val=0.25, test=0.5,
                    progress=False)
    aligner = DeepAlign.from_zoo(zoo)
    aligner.task = {"model": zoo.config, "dataset": zoo.dataset}
    aligner.save(root / "aligner.pt")
    return zoo, str(root / "aligner.pt"), root


@pytest.mark.slow
def test_evaluate_compares_all_seven_methods_on_the_same_pairs(zoo_and_aligner, tmp_path):
    zoo, aligner, _ = zoo_and_aligner
    results, paths = evaluate_zoo(zoo.path, aligner, str(tmp_path), n_pairs=3,
                                  sinkhorn_steps=4, n_points=5, progress=False)
    assert [r.name for r in results] == list(METHODS)
    report = json.load(open(paths["json"]))
    assert [m["method"] for m in report["methods"]] == list(METHODS)
    assert all(os.path.getsize(paths[k]) > 0 for k in ("png", "table", "convergence"))
    assert set(report["barrier_by_step"]) == {"sinkhorn", "wm_sinkhorn", "deep_align_sinkhorn"}
    # the naive row is the barrier of the unaligned pairs, computed independently here
    naive = results[0]
    data = load_dataset("digits")
    idx_a, idx_b = held_out_pairs(zoo, 3)
    direct = loss_barrier(zoo.build_model(), zoo.stacked(idx_a), zoo.stacked(idx_b),
                          (data.X_test, data.y_test), n_points=5)
    torch.testing.assert_close(naive.curve.barrier, direct.barrier)
    wm = results[1]
    assert wm.curve.barrier.mean() < naive.curve.barrier.mean()


def test_align_writes_the_permuted_model_and_the_midpoint(zoo_and_aligner, tmp_path):
    zoo, aligner, _ = zoo_and_aligner
    a, b = tmp_path / "a.pt", tmp_path / "b.safetensors"
    save_state_dict(zoo.state_dict(0), a)
    save_state_dict(zoo.state_dict(1), b)
    summary = align_files(a, b, aligner, str(tmp_path / "b_aligned.pt"),
                          merge=str(tmp_path / "merged.pt"))
    assert summary["max_output_change"] < 1e-4
    model = DeepAlign.load(aligner).eval()
    perms = model.align(zoo.state_dict(0), zoo.state_dict(1))
    spec = PermutationSpec.from_module(zoo.build_model(), torch.zeros(1, 1, 8, 8))
    expected = permute(zoo.state_dict(1), spec, perms)
    got = load_state_dict(tmp_path / "b_aligned.pt")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    merged = load_state_dict(tmp_path / "merged.pt")
    torch.testing.assert_close(merged["layers.0.weight"],
                               (zoo.state_dict(0)["layers.0.weight"] + expected["layers.0.weight"]) / 2)


def test_align_rejects_mismatched_networks_and_foreign_aligners(zoo_and_aligner, tmp_path):
    zoo, aligner, _ = zoo_and_aligner
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    save_state_dict(zoo.state_dict(0), a)
    save_state_dict(MLP(64, [16, 8], 10).state_dict(), b)
    with pytest.raises(SystemExit, match="layers.1.weight"):
        align_files(a, b, aligner, str(tmp_path / "out.pt"))
    # networks of another width than the aligner was trained for
    save_state_dict(MLP(64, [24, 16], 10).state_dict(), a)
    save_state_dict(MLP(64, [24, 16], 10).state_dict(), b)
    with pytest.raises(SystemExit, match="does not fit"):
        align_files(a, b, aligner, str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()


def test_evaluate_an_inr_zoo_pairs_views_and_scores_against_their_image(tmp_path):
    from deepalign.evaluation import squared_error
    from deepalign.models import SIREN
    from deepalign.zoo import fitted_images

    zoo = train_zoo(str(tmp_path / "inr"), "digits", SIREN(2, [8, 8], 1).config, 16,
                    TrainSettings(epochs=3, lr=(1e-3, 1e-3)), seed=0, chunk_size=16, val=0.25,
                    test=0.5, views=2, progress=False)
    methods = ["naive", "weight_matching", "activation_matching", "sinkhorn"]
    results, _ = evaluate_zoo(zoo.path, None, str(tmp_path / "eval"), n_pairs=8,
                              sinkhorn_steps=3, methods=methods, n_points=5, progress=False)
    idx_a, idx_b = held_out_pairs(zoo, 8)
    image = {r["index"]: r["image"] for r in zoo.records}
    assert len(idx_a) == len(zoo.split["test"]) // 2
    assert all(image[i] == image[j] and i != j for i, j in zip(idx_a, idx_b))
    x, y = fitted_images(zoo, idx_a)
    direct = loss_barrier(zoo.build_model(), zoo.stacked(idx_a), zoo.stacked(idx_b), (x, y),
                          n_points=5, loss_fn=squared_error, targets_per_pair=True)
    assert [r.name for r in results] == methods
    torch.testing.assert_close(results[0].curve.losses, direct.losses)
    assert all(torch.isfinite(r.curve.barrier).all() for r in results)


def test_deep_align_start_seeds_sinkhorn_with_logits_that_round_to_its_perms(zoo_and_aligner):
    from deepalign.comparison._refine import INIT_STD, deep_align_start
    from deepalign.ops import linear_assignment

    zoo, aligner, _ = zoo_and_aligner
    model = DeepAlign.load(aligner)
    a, b = zoo.stacked([0, 1, 2]), zoo.stacked([3, 4, 5])
    perms, init = deep_align_start(model, a, b)
    assert not model.training
    for name, p in model.align(a, b).items():
        assert torch.equal(perms[name], p)
        assert torch.equal(linear_assignment(init[name], maximize=True), p)
        torch.testing.assert_close(init[name].std(dim=(-2, -1)),
                                   torch.full((3,), INIT_STD), rtol=1e-5, atol=1e-5)


def test_evaluate_measures_each_method_with_each_correction(zoo_and_aligner, tmp_path):
    zoo, _, _ = zoo_and_aligner
    methods = ["naive", "weight_matching"]
    results, paths = evaluate_zoo(zoo.path, None, str(tmp_path), n_pairs=3, n_points=5,
                                  methods=methods, progress=False,
                                  corrections=[None, "repair"], correction_samples=200)
    assert [(r.name, r.correction) for r in results] == [
        ("naive", None), ("naive", "repair"), ("weight_matching", None),
        ("weight_matching", "repair")]
    assert [r.label for r in results][-1] == "Weight matching + REPAIR"
    assert not torch.equal(results[2].curve.barrier, results[3].curve.barrier)
    table = open(paths["table"]).read()
    assert "acc. barrier (points)" in table and "| Naive + REPAIR |" in table
    report = json.load(open(paths["json"]))
    assert report["correction_samples"] == 200
    assert all(0 <= m["acc_barrier_mean"] <= 1 for m in report["methods"])


def test_align_writes_a_repaired_merge(zoo_and_aligner, tmp_path):
    from deepalign import repair
    from deepalign.cli._align import correction_data

    zoo, aligner, _ = zoo_and_aligner
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    save_state_dict(zoo.state_dict(0), a)
    save_state_dict(zoo.state_dict(1), b)
    x = load_dataset("digits").X_train[:300]
    torch.save(x, tmp_path / "x.pt")
    align_files(a, b, aligner, str(tmp_path / "b_aligned.pt"), merge=str(tmp_path / "m.pt"),
                correction="repair", data_source=str(tmp_path / "x.pt"))
    aligned = load_state_dict(tmp_path / "b_aligned.pt")
    expected = repair(zoo.build_model(), zoo.state_dict(0), aligned, 0.5, x)
    got = load_state_dict(tmp_path / "m.pt")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    assert correction_data("digits", samples=50).shape == (50, 1, 8, 8)
    with pytest.raises(SystemExit, match="--data must name a data set"):
        align_files(a, b, aligner, str(tmp_path / "o.pt"), merge=str(tmp_path / "m2.pt"),
                    correction="repair", data_source=str(tmp_path / "missing.pt"))


def test_align_takes_the_users_own_parameter_names(zoo_and_aligner, tmp_path):
    """Files as users save them (seq.0.weight ...), not as the zoo import renamed them."""
    zoo, aligner, _ = zoo_and_aligner
    rename = {k: k.replace("layers.", "seq.") for k in zoo.state_dict(0)}
    for i, name in ((0, "a.pt"), (1, "b.pt")):
        save_state_dict({rename[k]: v for k, v in zoo.state_dict(i).items()}, tmp_path / name)
    align_files(tmp_path / "a.pt", tmp_path / "b.pt", aligner, str(tmp_path / "out.pt"),
                merge=str(tmp_path / "m.pt"))
    perms = DeepAlign.load(aligner).eval().align(zoo.state_dict(0), zoo.state_dict(1))
    spec = PermutationSpec.from_module(zoo.build_model(), torch.zeros(1, 1, 8, 8))
    expected = permute(zoo.state_dict(1), spec, perms)
    got = load_state_dict(tmp_path / "out.pt")
    assert set(got) == set(rename.values())
    for key in expected:
        torch.testing.assert_close(got[rename[key]], expected[key])
    assert set(load_state_dict(tmp_path / "m.pt")) == set(rename.values())
    # entries that match neither by name nor by shape are still refused
    for i, name in ((0, "short_a.pt"), (1, "short_b.pt")):
        save_state_dict({rename[k]: v for k, v in zoo.state_dict(i).items()
                         if k != "layers.2.bias"}, tmp_path / name)
    with pytest.raises(SystemExit, match="neither by name nor in order"):
        align_files(tmp_path / "short_a.pt", tmp_path / "short_b.pt", aligner,
                    str(tmp_path / "x.pt"))
