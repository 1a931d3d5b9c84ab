"""``paired_ratio``: a method's barrier ratio to a baseline on the same pairs, with its interval."""
import math

import pytest
import torch

from deepalign.comparison import paired_ratio


def _reference(values, baseline, resamples, confidence, seed):
    """Loop over the same bootstrap draws; float64 ratio of sums; sorted-list percentiles."""
    n = len(values)
    draw = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    ratios = sorted(sum(values[i] for i in row) / sum(baseline[i] for i in row)
                    for row in draw.tolist())

    def percentile(q):  # linear interpolation between closest ranks, as torch.quantile
        pos = q * (len(ratios) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ratios) - 1)
        return ratios[lo] + (pos - lo) * (ratios[hi] - ratios[lo])

    tail = (1 - confidence) / 2
    diffs = [x - y for x, y in zip(values, baseline)]
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    return {"ratio": sum(values) / sum(baseline), "interval": [percentile(tail),
                                                               percentile(1 - tail)],
            "diff_mean": mean, "diff_se": se, "lower_on": sum(x < y for x, y in
                                                              zip(values, baseline)),
            "pairs": n}


@pytest.mark.parametrize("n", [2, 7, 25])
def test_matches_a_loop_over_the_same_draws(n):
    gen = torch.Generator().manual_seed(n)
    baseline = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.1).tolist()
    values = (torch.rand(n, generator=gen, dtype=torch.float64) * 0.8).tolist()
    got = paired_ratio(values, baseline, resamples=300, confidence=0.9, seed=3)
    want = _reference(values, baseline, 300, 0.9, 3)
    assert got["pairs"] == want["pairs"] and got["lower_on"] == want["lower_on"]
    for key in ("ratio", "diff_mean", "diff_se"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15)
    assert got["interval"] == pytest.approx(want["interval"], rel=1e-12)
    assert got["interval"][0] <= got["ratio"] <= got["interval"][1]


def test_a_constant_ratio_has_no_spread_and_a_shift_counts_every_pair():
    baseline = torch.rand(40, generator=torch.Generator().manual_seed(0)) + 0.5
    half = paired_ratio(0.5 * baseline, baseline)
    assert half["ratio"] == pytest.approx(0.5) and half["lower_on"] == 40
    assert half["interval"] == pytest.approx([0.5, 0.5])
    same = paired_ratio(baseline, baseline)
    assert same["interval"] == pytest.approx([1.0, 1.0])
    assert same["diff_mean"] == 0 and same["diff_se"] == 0 and same["lower_on"] == 0


def test_more_pairs_narrow_the_interval():
    gen = torch.Generator().manual_seed(1)
    baseline = torch.rand(400, generator=gen, dtype=torch.float64) + 0.2
    values = 0.6 * baseline + 0.1 * torch.randn(400, generator=gen, dtype=torch.float64)
    few, many = paired_ratio(values[:25], baseline[:25]), paired_ratio(values, baseline)
    assert many["interval"][1] - many["interval"][0] < few["interval"][1] - few["interval"][0]


@pytest.mark.parametrize("values, baseline, kwargs, match", [
    ([0.1, 0.2], [0.3], {}, "same pairs"),
    ([0.1], [0.3], {}, "at least 2 pairs"),
    ([[0.1, 0.2]], [[0.3, 0.4]], {}, "values: expected one score per pair"),
    ([0.1, float("nan")], [0.3, 0.4], {}, "values: scores must be finite"),
    ([0.1, 0.2], [0.3, float("inf")], {}, "baseline: scores must be finite"),
    ([0.1, 0.2], [0.0, 0.0], {}, "baseline: the mean must be positive"),
    ([0.1, 0.2], [0.3, 0.4], {"confidence": 1.0}, "confidence"),
    ([0.1, 0.2], [0.3, 0.4], {"resamples": 0}, "resamples"),
])
def test_bad_input_names_the_argument(values, baseline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_ratio(values, baseline, **kwargs)
