"""A small digits zoo (64-16-16-10 MLPs) for the training tests, built once per session."""
import os

from deepalign.models import MLP
from deepalign.zoo import TrainSettings, Zoo, train_zoo

ARCH = MLP(64, [16, 16], 10).config
SETTINGS = TrainSettings(epochs=4, batch_size=64, lr=(2e-3, 5e-3))


def tiny_align_zoo(folder) -> Zoo:
    path = os.path.join(str(folder), "zoo")
    return train_zoo(path, "digits", ARCH, 30, SETTINGS, seed=1, chunk_size=30, val=0.2,
                     test=0.2, progress=False)
