"""A tiny digits zoo, built in about a second, shared by the zoo tests."""
from deepalign.models import MLP
from deepalign.zoo import TrainSettings, train_zoo

ARCH = MLP(64, [8], 10).config
SETTINGS = TrainSettings(epochs=1, batch_size=128, lr=(1e-3, 1e-2), weight_decay=(0.0, 1e-3))


def tiny_zoo(out, count=6, chunk_size=2, seed=3, **kwargs):
    return train_zoo(str(out), "digits", ARCH, count, SETTINGS, seed=seed, chunk_size=chunk_size,
                     progress=False, **kwargs)
