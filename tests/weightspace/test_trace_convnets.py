"""Derived specs of convnets: ResNet-18/50-style, MobileNetV3-style (depthwise, grouped, SE)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepalign.weightspace import GroupedAxis, PermutationSpec, check_equivalent
from structured_nets import GroupedNet
from trace_helpers import assert_exact_symmetry, mix_across_blocks, random_weights


def conv_bn(c_in, c_out, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, c_in, width, stride):
        super().__init__()
        self.a = conv_bn(c_in, width, 3, stride)
        self.b = conv_bn(width, width)
        self.shortcut = (conv_bn(c_in, width, 1, stride) if stride != 1 or c_in != width
                         else nn.Identity())

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, width, stride, groups=1):
        super().__init__()
        out = 4 * width
        self.a = conv_bn(c_in, width, 1)
        self.b = conv_bn(width, width, 3, stride, groups)
        self.c = conv_bn(width, out, 1)
        self.shortcut = (conv_bn(c_in, out, 1, stride) if stride != 1 or c_in != out
                         else nn.Identity())

    def forward(self, x):
        y = F.relu(self.b(F.relu(self.a(x))))
        return F.relu(self.c(y) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, layers=(2, 2), widths=(4, 8), groups=1):
        super().__init__()
        self.stem = conv_bn(3, widths[0], 7, 2)
        c, stages = widths[0], []
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                extra = {"groups": groups} if block is Bottleneck else {}
                blocks.append(block(c, w, 2 if (i > 0 and j == 0) else 1, **extra))
                c = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        x = self.stages(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in, expand, c_out, stride, se, groups=None):
        super().__init__()
        self.expand = conv_bn(c_in, expand, 1)
        self.depthwise = conv_bn(expand, expand, 3, stride, groups or expand)
        self.se = SqueezeExcite(expand, 4) if se else nn.Identity()
        self.project = conv_bn(expand, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = F.hardswish(self.expand(x))
        y = self.project(self.se(F.hardswish(self.depthwise(y))))
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.blocks = nn.Sequential(InvertedResidual(8, 16, 8, 1, se=True),
                                    InvertedResidual(8, 24, 12, 2, se=False),
                                    InvertedResidual(12, 24, 12, 1, se=True, groups=4))
        self.last = conv_bn(12, 32, 1)
        self.classifier = nn.Sequential(nn.Linear(32, 20), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(20, 5))

    def forward(self, x):
        x = F.hardswish(self.last(self.blocks(F.hardswish(self.stem(x)))))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


X = torch.randn(2, 3, 16, 16, dtype=torch.float64)
CASES = {"resnet18_style": lambda: ResNet(Basic),
         "resnet50_style": lambda: ResNet(Bottleneck, widths=(2, 4)),
         "resnext_style": lambda: ResNet(Bottleneck, layers=(1, 1), widths=(4, 8), groups=2),
         "mobilenetv3_style": MobileNetV3}


@pytest.mark.parametrize("case", sorted(CASES))
def test_derived_spec_is_an_exact_symmetry(case):
    assert_exact_symmetry(CASES[case](), X)


def test_resnet_shortcuts_tie_the_stream_and_strided_convs_start_a_new_one():
    spec = PermutationSpec.from_module(ResNet(Basic), X.float())
    axes = spec.axes_to_perm
    stem = axes["stem.0.weight"][0]
    assert axes["stages.0.0.b.0.weight"][0] == stem  # identity shortcut: same stream
    second = axes["stages.1.0.shortcut.0.weight"]
    assert second[1] == stem and second[0] == axes["stages.1.0.b.0.weight"][0] != stem
    assert axes["stages.1.0.shortcut.1.running_var"] == (second[0],)
    assert axes["fc.weight"] == (None, second[0])
    assert spec.is_plain


def test_depthwise_passes_through_and_squeeze_excitation_ties_the_gate():
    spec = PermutationSpec.from_module(MobileNetV3(), X.float())
    axes = spec.axes_to_perm
    hidden = axes["blocks.0.expand.0.weight"][0]
    assert axes["blocks.0.depthwise.0.weight"] == (hidden, None, None, None)
    assert axes["blocks.0.se.fc1.weight"][1] == hidden
    assert axes["blocks.0.se.fc2.weight"][0] == hidden
    assert axes["blocks.0.se.fc2.bias"] == (hidden,)
    grouped = axes["blocks.2.depthwise.0.weight"]
    hidden2 = axes["blocks.2.expand.0.weight"][0]
    assert grouped[1] == GroupedAxis(hidden2)
    (group,) = spec.block_groups
    assert group.kind == "groups" and group.blocks == 4 and set(group.perms) == {hidden2,
                                                                                  grouped[0]}


def test_grouped_conv_matches_the_hand_written_spec():
    spec = PermutationSpec.from_module(GroupedNet(), torch.randn(3, 2, 6, 6))
    assert spec.axes_to_perm["conv2.weight"] == ("P_conv2", GroupedAxis("P_conv1"), None, None)
    assert spec.axes_to_perm["conv3.weight"] == (None, "P_conv2", None, None)
    assert spec.sizes == {"P_conv1": 8, "P_conv2": 12}
    (group,) = spec.block_groups
    assert (group.name, group.kind, group.blocks, group.perms) == (
        "G_conv2", "groups", 4, ("P_conv1", "P_conv2"))


def test_moving_channels_across_groups_breaks_the_function():
    model = GroupedNet().double()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    spec = PermutationSpec.from_module(model, x)
    perms = mix_across_blocks(spec, spec.random_perms(torch.Generator().manual_seed(0)),
                              "P_conv2")
    with pytest.raises(ValueError, match="block"):  # permute refuses it outright
        check_equivalent(model, random_weights(model), spec, perms, x)
