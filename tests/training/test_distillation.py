"""Distillation from solved training pairs: the loss, the cached targets, the trainer."""
import os

import pytest
import torch

from deepalign import weight_matching
from deepalign.data import load_dataset
from deepalign.nn import DeepAlign
from deepalign.testing import assert_aligner_equivariant
from deepalign.training import (DistillationTargets, TrainConfig, distillation_loss,
                                distillation_targets, read_metrics, supervised_loss, train)
from deepalign.weightspace import invert_permutations, random_permutations, to_soft

TINY = {"hidden": 8, "n_hidden": 1, "out_features": 8}


def _gather2(s, rows, cols):
    s = torch.gather(s, -2, rows[..., :, None].expand_as(s))
    return torch.gather(s, -1, cols[..., None, :].expand_as(s))


@pytest.mark.parametrize("n_iters", [0, 1, 20])
def test_loss_is_minimised_by_the_target_perms(n_iters):
    gen = torch.Generator().manual_seed(0)
    target = random_permutations({"P": 7, "Q": 5}, 3, gen)
    noise = {k: torch.randn(3, v.shape[-1], v.shape[-1], generator=gen, dtype=torch.float64)
             for k, v in target.items()}
    soft = to_soft(target, torch.float64)
    losses = [float(distillation_loss({k: c * soft[k] + noise[k] for k in target}, target,
                                      n_iters)) for c in (0.0, 2.0, 8.0, 40.0)]
    assert all(x > y for x, y in zip(losses, losses[1:])) and losses[-1] < 1e-6
    assert min(losses) >= 0
    # any other perm as the plan scores worse than the target itself
    other = random_permutations({"P": 7, "Q": 5}, 3, gen)
    wrong = distillation_loss({k: 40 * to_soft(other, torch.float64)[k] for k in target},
                              target, n_iters)
    assert wrong > losses[-1]


def test_loss_is_the_supervised_loss_without_sinkhorn_and_is_swap_symmetric():
    gen = torch.Generator().manual_seed(1)
    target = random_permutations({"P": 6}, 4, gen)
    logits = {"P": torch.randn(4, 6, 6, generator=gen, dtype=torch.float64)}
    torch.testing.assert_close(distillation_loss(logits, target, 0),
                               supervised_loss(logits, target))
    swapped = distillation_loss({"P": logits["P"].mT}, invert_permutations(target), 0)
    torch.testing.assert_close(distillation_loss(logits, target, 0), swapped)


@pytest.mark.parametrize("n_iters", [0, 20])
def test_loss_is_invariant_under_relabelling_both_networks(n_iters):
    # S(g#a, h#b) = G S H^T with the target g^-1-relabelled: the loss cannot tell
    gen = torch.Generator().manual_seed(2)
    target = random_permutations({"P": 6}, 2, gen)
    logits = {"P": torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)}
    g, h = random_permutations({"P": 6}, 2, gen), random_permutations({"P": 6}, 2, gen)
    moved = {"P": _gather2(logits["P"], g["P"], h["P"])}
    # new target: A's position i holds old A neuron g[i], matched to old B neuron t[g[i]],
    # which sits at position h^-1[t[g[i]]] of the relabelled B
    new = {"P": torch.gather(h["P"].argsort(-1), -1, torch.gather(target["P"], -1, g["P"]))}
    torch.testing.assert_close(distillation_loss(moved, new, n_iters),
                               distillation_loss(logits, target, n_iters))


def test_targets_beat_no_alignment_and_resume_from_their_cache(align_zoo, tmp_path):
    zoo = align_zoo
    spec, model = zoo.spec(), zoo.build_model()
    data = load_dataset(zoo.dataset)
    nets = zoo.stacked(zoo.split["train"])
    path = str(tmp_path / "targets.pt")
    kwargs = dict(n_pairs=6, sinkhorn_steps=3, chunk=4, seed=0, path=path)
    first = distillation_targets(nets, spec, model, (data.X_train, data.y_train), **kwargs)
    assert len(first) == 6 and (first.a != first.b).all() and first.seconds > 0
    for name, p in first.perms.items():
        assert (p.sort(-1).values == torch.arange(p.shape[-1])).all(), name
    again = distillation_targets(nets, spec, model, None, **kwargs)  # cached: no data needed
    for name in first.perms:
        assert torch.equal(first.perms[name], again.perms[name])
    wm = weight_matching({k: v[first.a] for k, v in nets.items()},
                         {k: v[first.b] for k, v in nets.items()}, spec)
    # one chunk, so that each pair sits where it does in the batched call above
    zero = distillation_targets(nets, spec, model, None,
                                **{**kwargs, "sinkhorn_steps": 0, "chunk": 6, "path": None})
    for name in wm:
        assert torch.equal(zero.perms[name], wm[name])
    with pytest.raises(ValueError, match="other settings"):
        distillation_targets(nets, spec, model, None, **{**kwargs, "n_pairs": 5})


def test_drawn_pairs_are_swapped_with_the_inverse_perms():
    gen = torch.Generator().manual_seed(3)
    perms = random_permutations({"P": 5}, 4, gen)
    bank = DistillationTargets(torch.arange(4), torch.arange(4) + 10, perms)
    i, j, drawn = bank.draw(64, torch.Generator().manual_seed(0))
    swapped = i >= 10
    assert 0 < swapped.sum() < 64
    k = torch.where(swapped, j, i)
    inverse = invert_permutations(perms)["P"]
    expected = torch.where(swapped[:, None], inverse[k], perms["P"][k])
    assert torch.equal(drawn["P"], expected)


@pytest.mark.slow
def test_training_with_distillation_logs_it_and_stays_equivariant(align_zoo, tmp_path):
    config = TrainConfig(steps=3, batch_size=4, image_batch=32, eval_every=3,
                         checkpoint_every=3, val_pairs=4, val_images=128, val_points=3,
                         distill_weight=1.0, distill_pairs=8, distill_steps=2)
    out = str(tmp_path / "run")
    aligner = train(align_zoo, out, config=config, progress=False, plot=False, **TINY)
    assert os.path.isfile(os.path.join(out, "targets.pt"))
    metrics = read_metrics(out)
    assert len(metrics["loss/distillation"]) == 3
    # the targets' compute time is on the run's clock
    assert metrics["time_s"][0][1] > torch.load(os.path.join(out, "targets.pt"))["seconds"]
    spec = align_zoo.spec()
    nets = align_zoo.stacked(align_zoo.split["val"])
    a = {k: v[:2].double() for k, v in nets.items()}
    b = {k: v[2:4].double() for k, v in nets.items()}
    assert_aligner_equivariant(aligner.double().eval(), spec, a, b,
                               generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_distillation_alone_encodes_two_networks_per_item(align_zoo, tmp_path, monkeypatch):
    config = TrainConfig(steps=2, batch_size=4, image_batch=32, eval_every=2,
                         checkpoint_every=2, val_pairs=4, val_images=128, val_points=3,
                         supervised_weight=0.0, alignment_weight=0.0, interpolation_weight=0.0,
                         distill_weight=1.0, distill_pairs=8, distill_steps=2)
    encoded = []
    real = DeepAlign.embed

    def counting(self, *batches, **kwargs):
        if self.training:
            encoded.append(len(batches))
        return real(self, *batches, **kwargs)

    monkeypatch.setattr(DeepAlign, "embed", counting)
    out = str(tmp_path / "run")
    train(align_zoo, out, config=config, progress=False, plot=False, **TINY)
    assert encoded == [2, 2]
    metrics = read_metrics(out)
    assert "loss/distillation" in metrics and "loss/supervised" not in metrics
    assert "loss/interpolation" not in metrics and len(metrics["val/barrier"]) == 1


def test_bad_distillation_settings_are_rejected():
    with pytest.raises(ValueError, match="distill"):
        TrainConfig(distill_weight=-1.0)
    with pytest.raises(ValueError, match="distill_pairs"):
        TrainConfig(distill_pairs=0)
    with pytest.raises(ValueError, match="not all 0"):
        TrainConfig(supervised_weight=0.0, alignment_weight=0.0, interpolation_weight=0.0)
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        TrainConfig(interpolation_weight=-1.0)
