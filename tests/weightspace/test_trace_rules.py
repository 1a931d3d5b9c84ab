"""One small network per rule family: each derived spec is an exact symmetry."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepalign.weightspace import PermutationSpec
from deepalign.weightspace.tracing._rules.linear import _einsum_letters
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


class HeadBias(nn.Module):
    """A learned per-head additive attention bias: heads may no longer move (their bias
    would need the head permutation itself), the dims inside each head still may."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.bias = nn.Parameter(torch.randn(2, 5, 5))

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return self.proj(y.transpose(1, 2).flatten(2))


class Multiplier(nn.Module):
    """A depthwise conv with channel multiplier 2 (groups = input channels)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 3, groups=4)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


class LearnedQueries(nn.Module):
    """Learned query tokens with a causal mask: the query positions must stay put."""

    def __init__(self):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, 5, 6))
        self.kv, self.out = nn.Linear(6, 12), nn.Linear(6, 2)

    def forward(self, x):
        k, v = self.kv(x).chunk(2, -1)
        q = self.queries.expand(x.shape[0], -1, -1)
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("make, x", [
    (HeadBias, (2, 5, 8)), (Multiplier, (2, 3, 6, 6)), (LearnedQueries, (2, 5, 6))],
    ids=["head_bias", "depthwise_multiplier", "learned_causal_queries"])
def test_structures_the_format_cannot_name_are_pinned_exactly(make, x):
    spec = assert_exact_symmetry(make(), torch.randn(*x, dtype=torch.float64))
    if make is HeadBias:
        assert spec.axes_to_perm["bias"] == (None, None, None) and not spec.block_groups
        assert spec.axes_to_perm["qkv.weight"][0] == (
            "P_qkv", "P_qkv_2", "P_qkv", "P_qkv_2", "P_qkv_3", "P_qkv_4")  # per head
    if make is LearnedQueries:
        assert spec.axes_to_perm["queries"][:2] == (None, None)  # features still move


class Padded(nn.Module):
    """Circular and reflect padding (F.pad, padding_mode) and an unused parameter."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.unused = nn.Parameter(torch.randn(7))
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h = F.pad(torch.relu(self.conv1(x)), (1, 1, 1, 1), mode="reflect")
        return self.fc(self.conv2(h).mean((2, 3)))


def test_padding_passes_channels_and_unused_tensors_are_not_permuted():
    spec = assert_exact_symmetry(Padded(), torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert spec.axes_to_perm["conv2.weight"][:2] == ("P_conv2", "P_conv1")
    assert spec.axes_to_perm["unused"] == (None,)


@pytest.mark.parametrize("equation, ranks, inputs, output", [
    ("ij,jk->ik", [2, 2], [["i", "j"], ["j", "k"]], ["i", "k"]),
    ("ij,jk", [2, 2], [["i", "j"], ["j", "k"]], ["i", "k"]),  # implicit: letters used once
    ("...ij,...jk->...ik", [4, 3], [["...0", "...1", "i", "j"], ["...1", "j", "k"]],
     ["...0", "...1", "i", "k"]),  # broadcast axes align from the right
    ("b i d , b j d -> b i j", [3, 3], [["b", "i", "d"], ["b", "j", "d"]], ["b", "i", "j"]),
])
def test_einsum_labels(equation, ranks, inputs, output):
    assert _einsum_letters(equation, ranks) == (inputs, output)
