"""The supervised, alignment and interpolation losses."""
import torch
import torch.nn.functional as F

from deepalign import PermutationSpec, permute
from deepalign.models import MLP, batched_forward
from deepalign.testing import random_state_dict
from deepalign.training import alignment_loss, interpolation_loss, supervised_loss
from deepalign.weightspace import random_permutations, to_soft


def test_supervised_loss_prefers_the_target_and_is_swap_symmetric():
    gen = torch.Generator().manual_seed(0)
    target = random_permutations({"P": 6}, 3, gen)
    right = 8 * to_soft(target, torch.float64)["P"]
    noise = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    good = supervised_loss({"P": right + noise}, target)
    bad = supervised_loss({"P": noise}, target)
    assert good < bad
    swapped = supervised_loss({"P": (right + noise).mT}, {"P": target["P"].argsort(-1)})
    torch.testing.assert_close(good, swapped)


def test_alignment_and_interpolation_losses_at_the_true_perm():
    model = MLP(12, hidden=(6,), out_features=3).double()
    spec = PermutationSpec.from_module(model.float(), torch.zeros(1, 12))
    model.double()
    gen = torch.Generator().manual_seed(1)
    a = random_state_dict(model, 2, generator=gen)
    t = random_permutations(spec.perm_sizes(a, batched=True), 2, gen)
    b = permute(a, spec, t)
    plans = to_soft({k: v.argsort(-1) for k, v in t.items()}, torch.float64)
    aligned = permute(b, spec, plans)
    assert alignment_loss(a, aligned, list(a)) == 0
    assert alignment_loss(a, b, list(a)) > 0
    x, y = torch.randn(5, 12, dtype=torch.float64), torch.randint(3, (5,))
    lam = torch.tensor([0.3, 0.8], dtype=torch.float64)
    expected = F.cross_entropy(batched_forward(model, a, x).reshape(-1, 3), y.repeat(2))
    torch.testing.assert_close(interpolation_loss(model, a, aligned, x, y, lam), expected)


def test_interpolation_loss_with_each_pairs_own_targets():
    from deepalign.evaluation import squared_error
    from deepalign.models import SIREN

    model = SIREN(2, [5], 1).double()
    gen = torch.Generator().manual_seed(2)
    a = random_state_dict(model, 2, generator=gen)
    b = random_state_dict(model, 2, generator=gen)
    x = torch.rand(7, 2, dtype=torch.float64, generator=gen)
    y = torch.rand(2, 7, 1, dtype=torch.float64, generator=gen)
    lam = torch.tensor([0.25, 1.0], dtype=torch.float64)
    got = interpolation_loss(model, a, b, x, y, lam, squared_error)
    mixed = {k: lam.reshape(-1, *[1] * (v.dim() - 1)) * v
             + (1 - lam.reshape(-1, *[1] * (v.dim() - 1))) * b[k] for k, v in a.items()}
    out = batched_forward(model, mixed, x)
    torch.testing.assert_close(got, ((out - y) ** 2).mean())
