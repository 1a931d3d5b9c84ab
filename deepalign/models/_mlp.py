"""Fully connected ReLU classifier (the paper's MLP zoo: 784-128-128-128-10)."""
import torch
import torch.nn.functional as F
from torch import nn

from deepalign.models._checks import check_sizes


class MLP(nn.Module):
    """A ReLU multi-layer perceptron; images are flattened on entry.

    Parameters are named ``layers.{i}.weight`` (shape (out, in)) and ``layers.{i}.bias``
    (shape (out,)), ``i = 0 .. len(hidden)``, in execution order.

    Parameters
    ----------
    in_features : int
        Size of a flattened input, e.g. 784 for 28x28 images.
    hidden : sequence of int
        Widths of the hidden layers, e.g. ``(128, 128, 128)``; may be empty (a linear model).
    out_features : int
        Number of classes.
    """

    def __init__(self, in_features: int, hidden=(128, 128, 128), out_features: int = 10):
        super().__init__()
        hidden = check_sizes("hidden", hidden)
        sizes = [check_sizes("in_features", [in_features])[0], *hidden,
                 check_sizes("out_features", [out_features])[0]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.config = {"arch": "mlp", "in_features": sizes[0], "hidden": list(hidden),
                       "out_features": sizes[-1]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (N, ...) with ``in_features`` elements per sample → logits (N, out_features)."""
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)
