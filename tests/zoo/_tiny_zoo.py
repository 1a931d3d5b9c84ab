"""A tiny digits zoo (built in about a second), a simulated kill, and the one-model-at-a-time
training oracle, shared by the zoo tests."""
import math

import torch
import torch.nn.functional as F

from deepalign.models import MLP, build_model
from deepalign.zoo import TrainSettings, train_zoo
from deepalign.zoo import _build

ARCH = MLP(64, [8], 10).config
SETTINGS = TrainSettings(epochs=1, batch_size=128, lr=(1e-3, 1e-2), weight_decay=(0.0, 1e-3))


def tiny_zoo(out, count=6, chunk_size=2, seed=3, **kwargs):
    return train_zoo(str(out), "digits", ARCH, count, SETTINGS, seed=seed, chunk_size=chunk_size,
                     progress=False, **kwargs)


def interrupt_second_chunk(monkeypatch):
    """Make ``train_zoo`` raise KeyboardInterrupt as it starts its second chunk of classifiers
    (a killed run); ``monkeypatch.undo()`` restores it."""
    real, calls = _build.train_classifiers, []

    def killed_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_build, "train_classifiers", killed_on_second_chunk)


def train_alone(arch, data, seed, settings):
    """One nn.Module, torch.optim.AdamW and the same seed-derived init, hyper-parameters and
    data order as model ``seed`` of a batched run: the unbatched oracle (its state dict,
    BatchNorm running statistics included)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch)
    g = torch.Generator().manual_seed(seed)
    lr, wd = settings.sample(g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, eps=1e-8)
    total = settings.epochs * math.ceil(len(data.y_train) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: settings.lr_factor(t, total))
    for _ in range(settings.epochs):
        order = torch.randperm(len(data.y_train), generator=g)
        for idx in order.split(settings.batch_size):
            opt.zero_grad()
            F.cross_entropy(model(data.X_train[idx]), data.y_train[idx]).backward()
            opt.step()
            schedule.step()
    return model.state_dict()
