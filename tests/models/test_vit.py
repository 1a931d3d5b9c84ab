"""The ViT zoo architecture: layout, its symmetry written by hand, and the batched forward."""
import pytest
import torch

from deepalign import check_equivalent
from deepalign.models import ViT, batched_forward, build_model, example_input
from deepalign.testing import random_state_dict
from deepalign.weightspace import BlockGroup, PermutationSpec
from trace_helpers import assert_same_up_to_names

CONFIG = ViT(2, image_size=(8, 6), patch_size=2, width=12, depth=2, heads=3, hidden=10,
             out_features=4).config


def hand_spec(config) -> PermutationSpec:
    """The residual stream R, per block heads (q/k dims Q_i, v dims V_i) and MLP hidden M_i."""
    axes = {"patch.weight": ("R", None, None, None), "patch.bias": ("R",),
            "cls_token": (None, None, "R"), "pos_embed": (None, None, "R")}
    sizes, groups = {"R": config["width"]}, []
    for i in range(config["depth"]):
        p, qk, v, m = f"blocks.{i}.", f"Q{i}", f"V{i}", f"M{i}"
        axes.update({p + "norm1.weight": ("R",), p + "norm1.bias": ("R",),
                     p + "attn.qkv.weight": ((qk, qk, v), "R"), p + "attn.qkv.bias": ((qk, qk, v),),
                     p + "attn.proj.weight": ("R", v), p + "attn.proj.bias": ("R",),
                     p + "norm2.weight": ("R",), p + "norm2.bias": ("R",),
                     p + "fc1.weight": (m, "R"), p + "fc1.bias": (m,),
                     p + "fc2.weight": ("R", m), p + "fc2.bias": ("R",)})
        sizes.update({qk: config["width"], v: config["width"], m: config["hidden"]})
        groups.append(BlockGroup(f"H{i}", "heads", config["heads"], (qk, v)))
    axes.update({"norm.weight": ("R",), "norm.bias": ("R",), "head.weight": (None, "R"),
                 "head.bias": (None,)})
    return PermutationSpec(axes, sizes, groups)


def test_layout():
    model = ViT(1, image_size=(28, 28), patch_size=7, width=64, depth=2, heads=4, hidden=128)
    sd = model.state_dict()
    assert sd["pos_embed"].shape == (1, 17, 64) and sd["cls_token"].shape == (1, 1, 64)
    assert sd["blocks.1.attn.qkv.weight"].shape == (192, 64)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model(model.config).config == model.config
    assert example_input(model.config).shape == (1, 1, 28, 28)


@pytest.mark.parametrize("kwargs, match", [({"patch_size": 5}, "divisible"),
                                           ({"width": 10, "heads": 4}, "multiple of heads"),
                                           ({"depth": 0}, "positive")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViT(**kwargs)


def test_hand_written_symmetry_is_exact():
    model = build_model(CONFIG).eval()
    spec = hand_spec(CONFIG)
    sd = random_state_dict(model, batch_size=2, generator=torch.Generator().manual_seed(0))
    perms = spec.random_perms(torch.Generator().manual_seed(1), batch_size=2)
    x = torch.randn(5, 2, 8, 6, dtype=torch.float64)
    assert check_equivalent(model, sd, spec, perms, x) < 1e-9


@pytest.mark.parametrize("per_model", [False, True], ids=["shared-x", "per-model-x"])
def test_batched_forward_matches_each_model(per_model):
    model = build_model(CONFIG).double()
    sd = random_state_dict(model, batch_size=3, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 4, 2, 8, 6, dtype=torch.float64) if per_model else torch.randn(
        4, 2, 8, 6, dtype=torch.float64)
    out = batched_forward(model, sd, x, per_model_inputs=per_model)
    for b in range(3):
        model.load_state_dict({k: v[b] for k, v in sd.items()})
        torch.testing.assert_close(out[b], model(x[b] if per_model else x))


def test_derived_spec_has_the_hand_written_structure_and_is_exact():
    model = build_model(CONFIG).eval()
    spec = PermutationSpec.from_module(model, example_input(CONFIG))
    assert_same_up_to_names(spec, hand_spec(CONFIG))
    sd = random_state_dict(model, generator=torch.Generator().manual_seed(3))
    perms = spec.random_perms(torch.Generator().manual_seed(4))
    x = torch.randn(3, 2, 8, 6, dtype=torch.float64)
    assert check_equivalent(model, sd, spec, perms, x) < 1e-9
