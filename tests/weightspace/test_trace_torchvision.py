"""torchvision's ResNet-18 and MobileNetV3-small, where a torchvision matching this torch loads.

The package index only has torchvision builds for the CUDA torch, whose compiled ops fail to
load next to the CPU build (an error other than ImportError), so these skip on CI machines.
"""
import pytest
import torch

from trace_helpers import assert_exact_symmetry

try:
    import torchvision.models as tv_models
except Exception as exc:  # a mismatched build fails while loading its operators
    pytest.skip(f"torchvision is not importable here: {exc}", allow_module_level=True)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_get_exact_specs(name):
    model = getattr(tv_models, name)(num_classes=10)
    spec = assert_exact_symmetry(model, torch.randn(2, 3, 64, 64, dtype=torch.float64),
                                 seeds=(0,))
    assert len(spec.perm_names) > 5
