"""Small networks trained on scikit-learn's digits, shared by the alignment tests.

Training is cached per process, so the first test that asks for a model pays for it.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=None)
def digits():
    """``(x_train, y_train, x_test, y_test)``: 8x8 digits as (N, 1, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


class MLP(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.fc0 = nn.Linear(64, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(F.relu(self.fc0(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(x))


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResNet(nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.block1 = Block(channels)
        self.block2 = Block(channels)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


ARCHITECTURES = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}


@functools.lru_cache(maxsize=None)
def trained(kind: str, seed: int, epochs: int = 8) -> nn.Module:
    """One network of ``kind`` trained from init ``seed`` with its own data order (eval mode)."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[kind]()
    x, y, _, _ = digits()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1000 + seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(100):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def state(kind: str, seed: int) -> dict:
    """A detached copy of a trained network's state_dict."""
    return {k: v.detach().clone() for k, v in trained(kind, seed).state_dict().items()}


def stacked(kind: str, seeds) -> dict:
    """State_dicts of several trained networks stacked along a leading dimension."""
    states = [state(kind, s) for s in seeds]
    return {k: torch.stack([sd[k] for sd in states]) for k in states[0]}
