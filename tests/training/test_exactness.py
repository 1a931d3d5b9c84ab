"""A trained aligner recovers hidden permutations of held-out zoo networks."""
import pytest
import torch

from deepalign import PermutationSpec
from deepalign.nn import DeepAlign
from deepalign.training import Augmentation, PairSampler, TrainConfig, train

ENCODER = {"hidden": 16, "n_hidden": 2, "out_features": 16}


def _accuracy(aligner, sampler, gen):
    a, b, target = sampler.labelled(48, gen)
    found = aligner.align(a, b)
    exact = torch.stack([(found[k] == target[k]).all(-1) for k in target]).float().mean()
    neuron = torch.stack([(found[k] == target[k]).float().mean() for k in target]).mean()
    return float(exact), float(neuron)


@pytest.mark.slow
def test_trained_aligner_recovers_perms_of_held_out_networks(align_zoo, tmp_path):
    cfg = TrainConfig(steps=40, batch_size=4, image_batch=32, eval_every=40,
                      checkpoint_every=40, val_pairs=4, val_images=128, val_points=3)
    trained = train(align_zoo, str(tmp_path), config=cfg, progress=False, plot=False, **ENCODER)
    test = align_zoo.stacked(align_zoo.split["test"])
    spec = PermutationSpec.from_module(align_zoo.build_model(), torch.zeros(1, 64))
    torch.manual_seed(0)
    fresh = DeepAlign.from_spec(spec, test, **ENCODER).eval()
    # (v, t # v): the paper's exactness claim (Prop 5.2)
    clean = PairSampler(test, spec, trained.layout, Augmentation(0, 0, 0, 0))
    exact, _ = _accuracy(trained, clean, torch.Generator().manual_seed(0))
    assert exact >= 0.99
    # (v, t # aug(v)): what training buys over an untrained encoder
    noisy = PairSampler(test, spec, trained.layout, Augmentation(0.05, 0.05, 0.2, 0.1))
    _, trained_acc = _accuracy(trained, noisy, torch.Generator().manual_seed(1))
    _, fresh_acc = _accuracy(fresh, noisy, torch.Generator().manual_seed(1))
    assert trained_acc >= 0.85 and trained_acc > fresh_acc + 0.02, (trained_acc, fresh_acc)
