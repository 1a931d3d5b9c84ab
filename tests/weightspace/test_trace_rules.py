"""One small network per rule family: each derived spec is an exact symmetry."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepalign.weightspace import PermutationSpec
from trace_helpers import assert_exact_symmetry


class HandNorm(nn.Module):
    """LayerNorm written out: means and variances over the permuted axis are invariant."""

    def __init__(self):
        super().__init__()
        self.fc, self.gain, self.out = nn.Linear(5, 8), nn.Parameter(torch.ones(8)), nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc(x)
        h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True) + 1e-5).sqrt()
        return self.out(h * self.gain + h.amax(-1, keepdim=True))


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.fc = nn.Linear(8, 6)
        self.rms = nn.RMSNorm(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.inorm(F.relu(self.gn(self.conv(x))))
        return self.out(self.rms(self.fc(h.amax((2, 3)))))


class Pieces(nn.Module):
    """cat, slice, split with sizes, stack and cumsum over tokens."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.cat([torch.tanh(self.a(x)), self.b(x)], dim=-1)  # (N, T, 8)
        left, right = h[..., :3], h[..., 3:]
        first, second = right.split([2, 3], dim=-1)
        h = torch.stack([left, second], dim=0).sum(0).cumsum(dim=1)
        return self.out(torch.cat([h, first], dim=-1))


class Embedded(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens, self.fc = nn.Embedding(10, 6), nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(torch.relu(self.tokens(ids)).mean(1))


CASES = {"hand_layer_norm": (HandNorm, lambda: torch.randn(3, 5, dtype=torch.float64)),
         "group_instance_rms_norms": (Norms, lambda: torch.randn(2, 3, 6, 6, dtype=torch.float64)),
         "cat_slice_split_stack": (Pieces, lambda: torch.randn(2, 3, 4, dtype=torch.float64)),
         "embedding": (Embedded, lambda: torch.randint(0, 10, (2, 4)))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_family_is_exact(case):
    make, x = CASES[case]
    assert_exact_symmetry(make(), x())


def test_group_norm_moves_channels_within_groups():
    spec = PermutationSpec.from_module(Norms(), torch.randn(2, 3, 6, 6))
    (group,) = spec.block_groups
    assert group.kind == "groups" and group.blocks == 2 and group.perms == ("P_conv",)


def test_slices_of_a_concatenation_keep_their_own_perms():
    spec = PermutationSpec.from_module(Pieces(), torch.randn(2, 3, 4))
    axes = spec.axes_to_perm
    head, tail = axes["b.weight"][0]  # b's output is cut in two by split
    assert axes["a.weight"][0] == tail  # stacked and summed with a's output
    assert axes["out.weight"][1] == (tail, head)
