"""The axis-unification engine on its own: unions, splits, reshapes, pins."""
import pytest

from deepalign.weightspace.tracing._emit import propagate
from deepalign.weightspace.tracing._engine import AxisConflict, AxisEngine


def test_union_keeps_the_earliest_variable_and_refuses_different_sizes():
    e = AxisEngine()
    a, b, c = e.var(4), e.var(4), e.var(5)
    e.union(b, a)
    assert e.find(b) == a
    with pytest.raises(AxisConflict, match="sizes 4 and 5"):
        e.union(a, c)


def test_a_pin_spreads_through_the_class():
    e = AxisEngine()
    a, b = e.var(3), e.var(3)
    e.union(a, b)
    e.fix(b)
    assert e.is_fixed(a)
    assert e.var(1) is not None and e.is_fixed(e.var(1))  # size 1: nothing to permute


def test_head_split_and_merge_round_trip():
    e = AxisEngine()
    v = e.var(12)
    batch, tokens = e.var(2, fixed=True), e.var(5, fixed=True)
    x = ((("a", batch),), (("a", tokens),), (("a", v),))
    heads = e.reshape(x, (2, 5, 3, 4))  # (B, T, H, d)
    outer, parts = e.split[e.find(v)]
    assert heads[2] == (("a", outer),) and heads[3] == (("i", v),) and len(parts) == 3
    merged = e.reshape(heads, (2, 5, 12))
    assert merged[2] == (("a", e.find(v)),)


def test_flatten_against_a_weight_axis_gives_a_block_axis():
    e = AxisEngine()
    channels, h, w = e.var(4), e.var(3, fixed=True), e.var(3, fixed=True)
    weight_in = e.var(36)
    e.tie((("a", weight_in),), (("a", channels), ("a", h), ("a", w)))
    propagate(e)
    outer, parts = e.split[e.find(weight_in)]
    assert e.find(outer) == e.find(channels) and not e.is_fixed(channels)
    assert all(e.is_fixed(p) for p in parts)  # identity inside each channel's block


def test_conflicting_splits_are_reported():
    e = AxisEngine()
    v = e.var(12)
    e.split_equal(v, 3)
    with pytest.raises(AxisConflict, match="split into 3 parts is split into 4"):
        e.split_equal(v, 4)


def test_inner_parts_tied_to_one_perm_are_pinned():
    e = AxisEngine()
    v, shared = e.var(6), e.var(2)
    outer, parts = e.split_equal(v, 3)
    e.tie_factors(("a", shared), ("i", v))  # every head uses the same inner perm
    propagate(e)
    assert e.is_fixed(v)  # a Kronecker product, not a block group: pinned, still exact
