"""On independently trained pairs every baseline lowers the loss barrier below naive averaging,
and every permutation they return preserves the network function."""
import pytest
import torch

from alignment_nets import digits, stacked, trained
from deepalign.baselines import activation_matching, sinkhorn_rebasin, weight_matching
from deepalign.evaluation import loss_barrier
from deepalign.weightspace import PermutationSpec, check_equivalent, permute


def align(method, kind, a, b, spec):
    model, (x, y, _, _) = trained(kind, 0), digits()
    if method == "weight matching":
        return weight_matching(a, b, spec)
    if method == "activation matching":
        return activation_matching(model, a, b, spec, x)
    if method == "sinkhorn":
        return sinkhorn_rebasin(model, a, b, spec, (x, y), n_steps=60, batch_size=128)
    init = weight_matching(a, b, spec)
    return sinkhorn_rebasin(model, a, b, spec, (x, y), init=init, n_steps=30, batch_size=128)


@pytest.mark.slow
@pytest.mark.parametrize("kind, method", [
    ("mlp", "weight matching"), ("mlp", "activation matching"), ("mlp", "sinkhorn"),
    ("mlp", "weight matching + sinkhorn"), ("cnn", "weight matching"),
    ("cnn", "activation matching"), ("cnn", "sinkhorn")])
def test_alignment_beats_naive_averaging(kind, method):
    model, (x, y, x_test, y_test) = trained(kind, 0), digits()
    spec = PermutationSpec.from_module(model, x[:2])
    a, b = stacked(kind, [0, 2]), stacked(kind, [1, 3])  # two independent pairs at once
    before = {k: (a[k].clone(), b[k].clone()) for k in a}
    perms = align(method, kind, a, b, spec)
    assert all(torch.equal(a[k], va) and torch.equal(b[k], vb) for k, (va, vb) in before.items())
    check_equivalent(model, b, spec, perms, x_test[:64])
    naive = loss_barrier(model, a, b, (x_test, y_test), n_points=9)
    aligned = loss_barrier(model, a, permute(b, spec, perms), (x_test, y_test), n_points=9)
    assert bool((aligned.barrier < naive.barrier).all()), (aligned.barrier, naive.barrier)
    assert bool((aligned.auc <= naive.auc).all())
