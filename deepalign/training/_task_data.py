"""What a zoo's networks are scored on during training: inputs, targets, loss and pairing.

Classifier zoos: the training images and labels, cross-entropy, any two networks form a pair.
INR zoos (Navon et al.'s INR experiments): every network has its own target (the image it
fits, on the shared pixel grid), squared error, and only views of one image form a pair.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from deepalign.data import load_dataset
from deepalign.evaluation._barrier import default_loss, squared_error
from deepalign.zoo import fitted_images


@dataclass
class TaskData:
    """Inputs and targets for the interpolation loss and the validation barrier.

    Attributes
    ----------
    x : Tensor, (N, ...)
        Inputs shared by all networks.
    y : Tensor
        (N,) class labels, or with ``per_network`` (M, N, C): network ``m``'s own targets.
    per_network : bool
    loss_fn : callable (outputs (K, C), targets) -> per-sample losses (K,)
        Cross-entropy, or squared error for INRs.
    groups : LongTensor (M,), optional
        Networks pair only within a group (the image an INR fits); None: any two networks.
    """
    x: torch.Tensor
    y: torch.Tensor
    per_network: bool = False
    loss_fn: Callable = default_loss
    groups: torch.Tensor | None = None

    def to(self, device) -> TaskData:
        """Inputs and targets on ``device`` (the groups stay with the CPU sampler)."""
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def targets(self, networks: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        """Targets of samples ``pick`` for the pairs whose A networks are ``networks``:
        (len(pick),) shared labels, or (len(networks), len(pick), C) per network."""
        if self.per_network:
            return self.y[networks.to(self.y.device)][:, pick]
        return self.y[pick]


def task_data(zoo, indices: list) -> TaskData:
    """The :class:`TaskData` of the zoo networks ``indices`` (for INR zoos, their images)."""
    if zoo.dataset is None:
        raise ValueError(f"zoo {zoo.path}: no data set recorded; the interpolation loss and "
                         "the validation barrier need one")
    if zoo.fits_images:
        x, y = fitted_images(zoo, indices)
        views = zoo.manifest["training"]["views"]
        return TaskData(x, y, True, squared_error,
                        torch.tensor([i // views for i in indices]))
    data = load_dataset(zoo.dataset)
    return TaskData(data.X_train, data.y_train)
