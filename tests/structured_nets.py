"""Small networks with structured symmetries and their specs, written by hand.

- ``ViT``: patch embedding, class token, position embeddings, pre-norm blocks with packed
  q/k/v attention and an MLP, final norm and head. One residual-stream perm ``R``; per block
  ``i`` a heads group ``H<i>`` of the q/k perm ``QK<i>`` and the v perm ``V<i>``, and a plain
  MLP perm ``M<i>``.
- ``GroupedNet``: conv, grouped conv (4 groups), 1x1 conv; ``grouped_spec`` ties the grouped
  conv's input and output perms in one block group and gathers its input axis per group.
- ``ResNeXt``: a stem conv, then bottleneck blocks whose middle conv is grouped (in- and
  out-channel perms in one block group ``G<i>``), residual stream perm ``R``, mean-pool head.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from deepalign.weightspace import BlockGroup, GroupedAxis, PermutationSpec


class Block(nn.Module):
    def __init__(self, width, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        batch, tokens, width = x.shape
        q, k, v = (t.reshape(batch, tokens, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(width, -1))
        att = torch.softmax(q @ k.mT / math.sqrt(q.shape[-1]), -1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, width=12, heads=3, hidden=16, depth=2, patch=4, image=8, classes=5):
        super().__init__()
        self.patch = nn.Conv2d(1, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, width))
        self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(depth))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x[:, 0]))


def vit_spec(width=12, heads=3, hidden=16, depth=2):
    axes = {"cls_token": (None, None, "R"), "pos": (None, None, "R"),
            "patch.weight": ("R", None, None, None), "patch.bias": ("R",)}
    sizes, groups = {"R": width}, []
    for i in range(depth):
        p, packed = f"blocks.{i}.", (f"QK{i}", f"QK{i}", f"V{i}")
        axes.update({p + "ln1.weight": ("R",), p + "ln1.bias": ("R",),
                     p + "qkv.weight": (packed, "R"), p + "qkv.bias": (packed,),
                     p + "proj.weight": ("R", f"V{i}"), p + "proj.bias": ("R",),
                     p + "ln2.weight": ("R",), p + "ln2.bias": ("R",),
                     p + "fc1.weight": (f"M{i}", "R"), p + "fc1.bias": (f"M{i}",),
                     p + "fc2.weight": ("R", f"M{i}"), p + "fc2.bias": ("R",)})
        sizes.update({f"QK{i}": width, f"V{i}": width, f"M{i}": hidden})
        groups.append(BlockGroup(f"H{i}", "heads", heads, (f"QK{i}", f"V{i}")))
    axes.update({"ln.weight": ("R",), "ln.bias": ("R",), "head.weight": (None, "R"),
                 "head.bias": (None,)})
    return PermutationSpec(axes, sizes, groups)


class Bottleneck(nn.Module):
    def __init__(self, width, inner, groups):
        super().__init__()
        self.reduce = nn.Conv2d(width, inner, 1)
        self.grouped = nn.Conv2d(inner, inner, 3, padding=1, groups=groups)
        self.expand = nn.Conv2d(inner, width, 1)

    def forward(self, x):
        y = F.relu(self.reduce(x))
        y = F.relu(self.grouped(y))
        return F.relu(x + self.expand(y))


class ResNeXt(nn.Module):
    def __init__(self, width=8, inner=12, groups=3, depth=2, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.ModuleList(Bottleneck(width, inner, groups) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def resnext_spec(width=8, inner=12, groups=3, depth=2):
    axes = {"stem.weight": ("R", None, None, None), "stem.bias": ("R",)}
    sizes, block_groups = {"R": width}, []
    for i in range(depth):
        p, a, b = f"blocks.{i}.", f"A{i}", f"B{i}"
        axes.update({p + "reduce.weight": (a, "R", None, None), p + "reduce.bias": (a,),
                     p + "grouped.weight": (b, GroupedAxis(a), None, None),
                     p + "grouped.bias": (b,),
                     p + "expand.weight": ("R", b, None, None), p + "expand.bias": ("R",)})
        sizes.update({a: inner, b: inner})
        block_groups.append(BlockGroup(f"G{i}", "groups", groups, (a, b)))
    axes.update({"head.weight": (None, "R"), "head.bias": (None,)})
    return PermutationSpec(axes, sizes, block_groups)


class GroupedNet(nn.Module):
    def __init__(self, groups=4):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, groups=groups)
        self.conv3 = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.conv3(x).mean((2, 3))


def grouped_spec(groups=4):
    return PermutationSpec({"conv1.weight": ("P1", None, None, None), "conv1.bias": ("P1",),
                            "conv2.weight": ("P2", GroupedAxis("P1"), None, None),
                            "conv2.bias": ("P2",),
                            "conv3.weight": (None, "P2", None, None), "conv3.bias": (None,)},
                           {"P1": 8, "P2": 12},
                           [BlockGroup("G_conv2", "groups", groups, ("P1", "P2"))])


MODELS = {"vit": (ViT, vit_spec, lambda: torch.randn(3, 1, 8, 8, dtype=torch.float64)),
          "resnext": (ResNeXt, resnext_spec,
                      lambda: torch.randn(3, 1, 6, 6, dtype=torch.float64))}
