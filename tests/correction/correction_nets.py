"""Small networks of the three kinds REPAIR handles: BatchNorm, LayerNorm and no normalisation."""
import torch
from torch import nn


class BatchNormResNet(nn.Module):
    """conv-BN-ReLU, a residual block with a 1x1-conv-BN shortcut, pooling, a linear head."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.short, self.bn_short = nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, 4)

    def forward(self, x):
        h = torch.relu(self.bn0(self.conv0(x)))
        h = torch.relu(self.bn1(self.conv1(h)) + self.bn_short(self.short(h)))
        return self.head(h.mean((2, 3)))


class LayerNormMLP(nn.Module):
    def __init__(self, width: int = 12):
        super().__init__()
        self.fc0, self.ln0 = nn.Linear(5, width), nn.LayerNorm(width)
        self.fc1, self.ln1 = nn.Linear(width, width), nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        h = torch.relu(self.ln0(self.fc0(x)))
        return self.head(torch.relu(self.ln1(self.fc1(h))))


class PlainMLP(nn.Module):
    def __init__(self, width: int = 12):
        super().__init__()
        self.fc0, self.fc1, self.head = nn.Linear(5, width), nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(torch.relu(self.fc0(x)))))


def random_state(model: nn.Module, seed: int) -> dict:
    """Random float64 weights and BatchNorm statistics that are far from the identity."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            out[key] = value.clone()
        elif key.endswith("running_var"):
            out[key] = torch.rand(value.shape, generator=gen, dtype=torch.float64) + 0.5
        else:
            out[key] = torch.randn(value.shape, generator=gen, dtype=torch.float64) * (
                0.5 if value.dim() < 2 else value.shape[1] ** -0.5 * 1.5)
    return out


def inputs_for(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (3, 6, 6) if isinstance(model, BatchNormResNet) else (5,)
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64)


NETS = {"batchnorm_resnet": BatchNormResNet, "layernorm_mlp": LayerNormMLP, "plain_mlp": PlainMLP}
