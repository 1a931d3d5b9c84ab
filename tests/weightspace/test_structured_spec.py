"""Structured groups written by hand: heads with packed q/k/v, grouped convolutions."""
import json

import pytest
import torch
from torch import nn

from deepalign.testing import random_state_dict
from deepalign.weightspace import (BlockGroup, GroupedAxis, PermutationSpec, check_equivalent,
                                   permute, plain_view)
from deepalign.weightspace._structure import block_structure, compose_blocks
from structured_nets import GroupedNet, grouped_spec


class Attention(nn.Module):
    def __init__(self, width=12, heads=3, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=batch_first)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def attention_spec(width=12, heads=3, structured=True):
    packed = ("P_qk", "P_qk", "P_v")
    groups = [BlockGroup("H_attn", "heads", heads, ("P_qk", "P_v"))] if structured else []
    return PermutationSpec({"attn.in_proj_weight": (packed, None),
                            "attn.in_proj_bias": (packed,),
                            "attn.out_proj.weight": (None, "P_v"),
                            "attn.out_proj.bias": (None,)},
                           {"P_qk": width, "P_v": width}, groups)


CASES = {"attention": (Attention, attention_spec, lambda: torch.randn(2, 5, 12)),
         "attention_seq_first": (lambda: Attention(batch_first=False), attention_spec,
                                 lambda: torch.randn(5, 2, 12)),
         "grouped_conv": (GroupedNet, grouped_spec, lambda: torch.randn(3, 2, 6, 6))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_random_group_elements_preserve_the_function(case):
    make, spec_of, inputs = CASES[case]
    model, spec = make(), spec_of()
    sd = random_state_dict(model)
    for seed in range(3):
        perms = spec.random_perms(torch.Generator().manual_seed(seed))
        assert check_equivalent(model, sd, spec, perms, inputs()) < 1e-9
    batch = spec.random_perms(torch.Generator().manual_seed(9), batch_size=4)
    assert check_equivalent(model, sd, spec, batch, inputs()) < 1e-9


@pytest.mark.parametrize("case", sorted(CASES))
def test_ignoring_the_block_structure_breaks_the_function(case):
    make, spec_of, inputs = CASES[case]
    model, spec = make(), spec_of()
    perms = spec.random_perms(torch.Generator().manual_seed(0))
    name = spec.block_groups[0].perms[-1]
    perms[name] = torch.randperm(spec.sizes[name], generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="block"):
        permute(model.state_dict(), spec, perms)
    if case.startswith("attention"):  # without the block group anything goes, wrongly
        free = PermutationSpec(spec.axes_to_perm, spec.sizes)
        with pytest.raises(AssertionError, match="differs"):
            check_equivalent(model, random_state_dict(model), free, perms, inputs())


def test_block_permutations_must_agree_within_a_group():
    spec = attention_spec()
    perms = spec.random_perms(torch.Generator().manual_seed(0))
    s, t = block_structure(perms["P_v"], 3)
    perms["P_v"] = compose_blocks(s.roll(1), t)
    with pytest.raises(ValueError, match="move the blocks differently"):
        permute(Attention().state_dict(), spec, perms)


def test_random_perms_are_uniform_over_blocks():
    spec = attention_spec(width=4, heads=2)
    draws = spec.random_perms(torch.Generator().manual_seed(0), batch_size=4000)
    s, _ = block_structure(draws["P_qk"], 2)
    assert abs(s[:, 0].float().mean().item() - 0.5) < 0.05
    assert block_structure(draws["P_v"], 2)[0].equal(s)
    inner = block_structure(draws["P_v"], 2)[1][:, 0, 0].float().mean().item()
    assert abs(inner - 0.5) < 0.05


@pytest.mark.parametrize("case", sorted(CASES))
def test_plain_view_keeps_the_inner_product(case):
    make, spec_of, _ = CASES[case]
    model, spec = make(), spec_of()
    a, b = random_state_dict(model), random_state_dict(model)
    perms = spec.random_perms(torch.Generator().manual_seed(3))
    view, va = plain_view(spec, a)
    _, vb = plain_view(spec, b)
    assert view.structured_axes == {} and view.block_groups == spec.block_groups

    def inner(sa, sb, s):
        pb = permute(sb, s, perms)
        return sum((sa[k] * pb[k]).sum() for k in sa)

    torch.testing.assert_close(inner(va, vb, view), inner(a, b, spec))
    # the view of permute(b) is permute of the view of b
    _, vpb = plain_view(spec, permute(b, spec, perms))
    for key, value in permute(vb, view, perms).items():
        torch.testing.assert_close(vpb[key], value)


def test_dense_view_of_a_grouped_conv_computes_the_same():
    model, spec = GroupedNet(), grouped_spec()
    sd = random_state_dict(model, dtype=torch.float32)
    _, view = plain_view(spec, sd)
    x = torch.randn(2, 8, 5, 5)
    grouped = nn.functional.conv2d(x, sd["conv2.weight"], groups=4)
    dense = nn.functional.conv2d(x, view["conv2.weight"])
    torch.testing.assert_close(dense, grouped)


def test_soft_perms_on_packed_axes_match_hard_ones():
    spec = attention_spec()
    sd = Attention().state_dict()
    perms = spec.random_perms(torch.Generator().manual_seed(4))
    soft = {k: nn.functional.one_hot(p, p.numel()).float() for k, p in perms.items()}
    hard_out, soft_out = permute(sd, spec, perms), permute(sd, spec, soft)
    for key in sd:
        torch.testing.assert_close(soft_out[key], hard_out[key])


def test_round_trips_through_json():
    for spec in (attention_spec(), grouped_spec()):
        again = PermutationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and not again.is_plain


def test_bad_structured_specs_are_refused():
    with pytest.raises(ValueError, match="needs sizes"):
        PermutationSpec({"w": (("A", "B"), None)})
    with pytest.raises(ValueError, match="does not split into"):
        PermutationSpec({"w": ("A", None)}, {"A": 5}, [BlockGroup("H", "heads", 2, ("A",))])
    with pytest.raises(ValueError, match="one block group"):
        PermutationSpec({"w": ("A", GroupedAxis("B"))}, {"A": 4, "B": 4})
    with pytest.raises(ValueError, match="concatenated axis 0 has size"):
        attention_spec(width=12).check({"attn.in_proj_weight": torch.zeros(30, 12),
                                        "attn.in_proj_bias": torch.zeros(30),
                                        "attn.out_proj.weight": torch.zeros(12, 12),
                                        "attn.out_proj.bias": torch.zeros(12)})
    with pytest.raises(NotImplementedError, match="weight matching supports plain"):
        attention_spec().require_plain("weight matching")
