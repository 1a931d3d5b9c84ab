"""CIFAR-style residual network with BatchNorm (He et al., 2016, section 4.2)."""
import torch
import torch.nn.functional as F
from torch import nn

from deepalign.models._checks import check_sizes


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, 3x3 convolutions without bias.

    The shortcut is the identity, or a strided 1x1 convolution with BatchNorm
    (``shortcut.0``, ``shortcut.1``) when the block changes the stride or the width.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (N, in_channels, H, W) → (N, out_channels, H / stride, W / stride)."""
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-``depth`` for small images: a 3x3 stem, three stages of BasicBlocks, a linear head.

    Stage ``s`` (0, 1, 2) has ``(depth - 2) / 6`` blocks of ``round(16 * 2**s * width)``
    channels; stages 1 and 2 start with stride 2. Global average pooling feeds the head.
    ``depth = 8`` is one block per stage; 20 is the paper's smallest CIFAR net. Every
    convolution is followed by BatchNorm (affine, running statistics) and has no bias.
    Parameters are named ``stem.0.weight`` (conv), ``stem.1.*`` (BN),
    ``stages.{s}.{j}.conv1.weight``, ``...bn1.*``, ``...conv2.weight``, ``...bn2.*``,
    ``...shortcut.{0,1}.*`` (when present), ``head.weight``, ``head.bias``.

    Parameters
    ----------
    in_channels : int
    depth : int
        ``6 n + 2`` for ``n >= 1`` blocks per stage.
    width : float
        Width multiplier ``k``: stage widths ``round(16 k), round(32 k), round(64 k)``
        (fractional ``k`` allowed, e.g. 0.5 gives 8, 16, 32).
    out_features : int
        Number of classes.
    image_size : (int, int)
        Input height and width (recorded for ``example_input``; any size runs).
    stem_stride : int
        Stride of the stem convolution: 2 quarters the cost of the whole network on 28x28
        images (stages at 14, 7, 4 pixels), which is what lets a Fashion-MNIST zoo of
        dozens of ResNets train on two CPU cores.
    """

    def __init__(self, in_channels: int = 1, depth: int = 8, width: float = 1.0,
                 out_features: int = 10, image_size=(28, 28), stem_stride: int = 1):
        super().__init__()
        in_channels = check_sizes("in_channels", [in_channels])[0]
        out_features = check_sizes("out_features", [out_features])[0]
        stem_stride = check_sizes("stem_stride", [stem_stride])[0]
        depth = int(depth)
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"depth must be 6 n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        h, w = check_sizes("image_size", image_size)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c = (depth - 2) // 6, widths[0]
        stages = []
        for s, out in enumerate(widths):
            stage = []
            for j in range(blocks):
                stage.append(BasicBlock(c, out, 2 if s > 0 and j == 0 else 1))
                c = out
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], out_features)
        self.config = {"arch": "resnet", "in_channels": in_channels, "depth": depth,
                       "width": float(width), "out_features": out_features,
                       "image_size": [h, w], "stem_stride": stem_stride}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (N, in_channels, H, W) → logits (N, out_features)."""
        h = self.stages(self.stem(x))
        return self.head(h.mean((2, 3)))
