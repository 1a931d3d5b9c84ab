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
