"""A ViT zoo's evaluation: the heads ablation row, measured against B's own endpoint."""
import pytest
import torch

from deepalign.cli._evaluate import evaluate_zoo
from deepalign.comparison import ABLATIONS, METHODS
from deepalign.models import ViT
from deepalign.zoo import TrainSettings, train_zoo


@pytest.fixture(scope="module")
def vit_zoo(tmp_path_factory):
    config = ViT(1, image_size=(8, 8), patch_size=4, width=8, depth=1, heads=2, hidden=8).config
    return train_zoo(str(tmp_path_factory.mktemp("vit") / "zoo"), "digits", config, 8,
                     TrainSettings(epochs=1), seed=0, chunk_size=8, val=0.0, test=0.5,
                     progress=False)


def test_evaluate_adds_the_heads_ablation_for_attention_zoos(vit_zoo, tmp_path):
    results, _ = evaluate_zoo(vit_zoo.path, None, str(tmp_path), n_pairs=2, n_points=5,
                              methods=None, progress=False, sinkhorn_steps=2)
    names = [r.name for r in results]
    assert names[-1] == ABLATIONS[0] and set(names[:-1]) <= set(METHODS)
    by_name = {r.name: r.curve for r in results}
    naive, wm, ablation = (by_name[n] for n in ("naive", "weight_matching", "wm_heads_plain"))
    # a symmetry keeps B's loss at lambda = 1; the ablation's perms do not, and its barrier
    # counts that damage against B's own loss instead of hiding it under a higher line
    torch.testing.assert_close(wm.losses[:, -1], naive.losses[:, -1])
    damage = ablation.losses[:, -1] - naive.losses[:, -1]
    assert (damage.abs() > 1e-6).all()
    assert (ablation.barrier >= damage.clamp(min=0) - 1e-6).all()
    torch.testing.assert_close(ablation.psi[:, -1], damage)
