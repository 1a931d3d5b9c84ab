"""REPAIR: the merged network's channel statistics become the interpolated endpoint statistics."""
import pytest
import torch

from correction_nets import NETS, BatchNormResNet, PlainMLP, inputs_for, random_state
from deepalign import repair
from deepalign.correction import Correction, correction_sites
from deepalign.correction._instrument import run_instrumented
from deepalign.evaluation import interpolate
from deepalign.models import ViT


def site_stats(model, sd, x) -> list:
    """Per site, (2, C): mean and std of the channel in eval mode, measured independently."""
    sites = correction_sites(model, x)
    return [s[0] for s in run_instrumented(model, sites, "observe",
                                           {k: v[None] for k, v in sd.items()}, x)]


def outputs(model, sd, x):
    model.load_state_dict(sd)
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", sorted(NETS))
def test_repaired_channels_have_the_interpolated_statistics(name):
    model = NETS[name]().double()
    sd_a, sd_b = random_state(model, 0), random_state(model, 1)
    x = inputs_for(model, 200, 2)
    lam = 0.3
    merged = repair(model, sd_a, sd_b, lam, x)
    got = site_stats(model, merged, x)
    assert len(got) == len(correction_sites(model, x))
    for s_a, s_b, s_m in zip(site_stats(model, sd_a, x), site_stats(model, sd_b, x), got):
        torch.testing.assert_close(s_m, (1 - lam) * s_a + lam * s_b, rtol=1e-8, atol=1e-10)
    # without REPAIR the same merge is off target (variance collapse): the test can fail
    plain = site_stats(model, interpolate(sd_a, sd_b, lam), x)
    assert any(not torch.allclose(p, (1 - lam) * a + lam * b, rtol=1e-3) for p, a, b in
               zip(plain, site_stats(model, sd_a, x), site_stats(model, sd_b, x)))


@pytest.mark.parametrize("name", sorted(NETS))
def test_repair_at_the_endpoints_returns_their_function(name):
    model = NETS[name]().double()
    sd_a, sd_b = random_state(model, 3), random_state(model, 4)
    x = inputs_for(model, 100, 5)
    for lam, sd in ((0.0, sd_a), (1.0, sd_b)):
        torch.testing.assert_close(outputs(model, repair(model, sd_a, sd_b, lam, x), x),
                                   outputs(model, sd, x), rtol=1e-9, atol=1e-10)


def test_repair_writes_the_corrections_into_an_ordinary_state_dict():
    model = BatchNormResNet().double()
    sd_a, sd_b = random_state(model, 6), random_state(model, 7)
    x = inputs_for(model, 64, 8)
    merged = repair(model, sd_a, sd_b, 0.5, x)
    assert merged.keys() == sd_a.keys()
    assert all(merged[k].shape == sd_a[k].shape for k in sd_a)
    # only the sites' affine parameters change: convolutions and running statistics do not
    plain = interpolate(sd_a, sd_b, 0.5)
    changed = {k for k in sd_a if not torch.equal(merged[k], plain[k])}
    assert changed == {f"{m}.{p}" for m in ("bn0", "bn1", "bn_short") for p in ("weight", "bias")}


def test_repair_batches_pairs_like_one_pair_at_a_time():
    model = PlainMLP().double()
    pairs = [(random_state(model, 10 + i), random_state(model, 20 + i)) for i in range(3)]
    x = inputs_for(model, 50, 9)
    stacked = [{k: torch.stack([p[j][k] for p in pairs]) for k in pairs[0][0]} for j in (0, 1)]
    batched = repair(model, *stacked, 0.6, x)
    for i, (a, b) in enumerate(pairs):
        one = repair(model, a, b, 0.6, x)
        for k in one:
            torch.testing.assert_close(batched[k][i], one[k], rtol=1e-10, atol=1e-12)


def test_repair_takes_a_loader_and_data_pairs():
    model = PlainMLP().double()
    sd_a, sd_b = random_state(model, 30), random_state(model, 31)
    x = inputs_for(model, 60, 32)
    y = torch.zeros(60, dtype=torch.long)
    expected = repair(model, sd_a, sd_b, 0.5, x)
    for data in ((x, y), [(x[:25], y[:25]), (x[25:], y[25:])]):
        got = repair(model, sd_a, sd_b, 0.5, data)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-12)


def test_a_dead_channel_is_shifted_not_scaled_and_nothing_becomes_nan():
    model = PlainMLP().double()
    sd_a, sd_b = random_state(model, 40), random_state(model, 41)
    for sd in (sd_a, sd_b):  # hidden unit 0 of fc0 is constant (zero) in both endpoints
        sd["fc0.weight"][0] = 0.0
        sd["fc0.bias"][0] = 0.0
    x = inputs_for(model, 80, 42)
    merged = repair(model, sd_a, sd_b, 0.5, x)
    assert all(torch.isfinite(v).all() for v in merged.values())
    assert torch.equal(merged["fc0.weight"][0], torch.zeros_like(merged["fc0.weight"][0]))
    assert merged["fc0.bias"][0] == 0.0


def test_correction_sites_follow_the_spec():
    x = inputs_for(BatchNormResNet(), 2, 0).float()
    sites = correction_sites(BatchNormResNet(), x)
    # after each BatchNorm (never before it), never the head (its outputs are not permuted)
    assert [s.module for s in sites] == ["bn0", "bn1", "bn_short"]
    assert {s.perm for s in sites[1:]} == {sites[1].perm} != {sites[0].perm}
    x = inputs_for(NETS["layernorm_mlp"](), 2, 0).float()
    assert [s.module for s in correction_sites(NETS["layernorm_mlp"](), x)] \
        == ["ln0", "ln1"]


def test_correction_batches_endpoint_weights():
    """MergeMany's form: one merged network corrected toward the mean of K endpoints."""
    model = PlainMLP().double()
    ends = [random_state(model, 50 + i) for i in range(3)]
    x = inputs_for(model, 70, 53)
    mean = {k: sum(e[k] for e in ends) / 3 for k in ends[0]}
    fix = Correction("repair", model, x, [{k: v[None] for k, v in e.items()} for e in ends])
    out = fix({k: v[None] for k, v in mean.items()}, torch.zeros(1, dtype=torch.long),
              torch.full((1, 3), 1 / 3, dtype=torch.float64))
    got = site_stats(model, {k: v[0] for k, v in out.items()}, x)
    want = [sum(s) / 3 for s in zip(*(site_stats(model, e, x) for e in ends))]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)


def test_repair_corrects_a_vision_transformer():
    """Sites come from the exported spec and hooks, so attention is no obstacle."""
    model = ViT(1, image_size=(8, 8), patch_size=4, width=12, depth=2, heads=3, hidden=10,
                out_features=5).double()
    sd_a, sd_b = random_state(model, 60), random_state(model, 61)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(62), dtype=torch.float64)
    sites = correction_sites(model, x)
    # every hidden Linear / conv / LayerNorm output except those read only by a LayerNorm;
    # the packed qkv projection (concatenated perms) and the head are not sites
    assert [s.module for s in sites[:6]] == ["patch", "blocks.0.norm1", "blocks.0.attn.proj",
                                             "blocks.0.norm2", "blocks.0.fc1", "blocks.0.fc2"]
    assert len(sites) == 12 and sites[-1].module == "norm"
    lam = 0.4
    got = site_stats(model, repair(model, sd_a, sd_b, lam, x), x)
    assert len(got) == len(sites)
    for s_a, s_b, s_m in zip(site_stats(model, sd_a, x), site_stats(model, sd_b, x), got):
        torch.testing.assert_close(s_m, (1 - lam) * s_a + lam * s_b, rtol=1e-8, atol=1e-10)
    for lam, sd in ((0.0, sd_a), (1.0, sd_b)):
        torch.testing.assert_close(outputs(model, repair(model, sd_a, sd_b, lam, x), x),
                                   outputs(model, sd, x), rtol=1e-9, atol=1e-10)


class _Shared(torch.nn.Module):
    """fc0's output feeds a LayerNorm and a residual addition: both are sites."""

    def __init__(self):
        super().__init__()
        self.fc0, self.ln = torch.nn.Linear(5, 8), torch.nn.LayerNorm(8)
        self.fc1, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc0(x)
        return self.head(torch.relu(self.fc1(self.ln(h)) + h))


def test_a_layer_read_by_a_norm_and_by_something_else_is_a_site():
    x = torch.randn(4, 5)
    assert [s.module for s in correction_sites(_Shared(), x)] == ["fc0", "ln", "fc1"]
