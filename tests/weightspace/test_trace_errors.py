"""Clear errors from spec derivation, and the rule registry."""
import pytest
import torch
from torch import nn

from deepalign.weightspace import PermutationSpec
from deepalign.weightspace.tracing import RULES
from trace_helpers import assert_exact_symmetry


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return torch.sort(self.fc(x), dim=-1).values


class Sorting(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.out = Block(), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.block(x))


def test_an_op_without_a_rule_names_node_op_and_module():
    with pytest.raises(NotImplementedError) as info:
        PermutationSpec.from_module(Sorting(), torch.randn(3, 6))
    message = str(info.value)
    assert "node 'sort'" in message and "op aten.sort" in message
    assert "module 'block' (Block)" in message


class MaskedSort(nn.Module):
    """Sorting only fixed values (the inputs) is fine: no perm acts there."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.sort(x, dim=-1).values)))


def test_an_op_without_a_rule_on_unpermuted_values_is_fine():
    spec = assert_exact_symmetry(MaskedSort(), torch.randn(3, 6, dtype=torch.float64))
    assert spec.perm_names == ["P_fc"]


def test_a_new_rule_is_one_registry_entry(monkeypatch):
    def sort_values(ctx):  # sorting a permuted axis forgets the permutation: pin it
        layout = ctx.layout(ctx.arg(0))
        dim = ctx.arg(1, "dim", -1) % len(layout)
        ctx.engine.fix_layout(layout[dim:dim + 1])
        return [layout, layout]

    monkeypatch.setitem(RULES, "aten::sort", sort_values)
    spec = PermutationSpec.from_module(Sorting(), torch.randn(3, 6))
    assert spec.axes_to_perm["block.fc.weight"] == (None, None)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # control flow on values: torch.export refuses it
            return y
        return -y


def test_an_untraceable_model_is_not_implemented():
    with pytest.raises(NotImplementedError, match="torch.export cannot trace DataDependent"):
        PermutationSpec.from_module(DataDependent(), torch.randn(2, 4))


def test_a_wrong_example_input_is_a_value_error():
    with pytest.raises(ValueError, match="example_input does not run through Sorting"):
        PermutationSpec.from_module(Sorting(), torch.randn(3, 5))


def test_model_mode_and_weights_are_untouched():
    model = Sorting().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NotImplementedError):
        PermutationSpec.from_module(model, torch.randn(3, 6))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class GroupedQuery(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.kv = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        q = self.q(x).view(2, 5, 4, 2).transpose(1, 2)  # 4 query heads
        k, v = self.kv(x).view(2, 5, 2, 4).transpose(1, 2).chunk(2, dim=-1)  # 2 kv heads
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def test_a_rule_that_gives_up_names_the_reason():
    with pytest.raises(NotImplementedError, match="grouped-query attention has no rule yet"):
        PermutationSpec.from_module(GroupedQuery(), torch.randn(2, 5, 8))


def test_an_op_reading_a_parameter_without_a_rule_is_refused():
    model = nn.Sequential(nn.ConvTranspose1d(4, 6, 3), nn.Flatten(), nn.Linear(42, 2))
    with pytest.raises(NotImplementedError, match=r"op aten.conv_transpose1d.* module '0'"):
        PermutationSpec.from_module(model, torch.randn(2, 4, 5))


class Scrambled(nn.Module):
    """A reshape that moves features across tokens, on fixed values: harmless."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(x.reshape(3, 4).t().reshape(2, 6)))


def test_unrelatable_axes_on_unpermuted_values_are_fine():
    spec = assert_exact_symmetry(Scrambled(), torch.randn(2, 6, dtype=torch.float64))
    assert spec.perm_names == []
