"""SIREN implicit neural representation (Sitzmann et al., 2020), as in the paper's INR zoos."""
import math

import torch
from torch import nn

from deepalign.models._checks import check_sizes


class SIREN(nn.Module):
    """Sine-activated MLP mapping coordinates to values: an image fitted as a function.

    ``h_1 = sin(w0 (W_0 x + b_0))``, ``h_{k+1} = sin(w0 (W_k h_k + b_k))``, and the output is
    ``W_L h_L + b_L + offset``. The paper's INRs are 2-32-32-1 with ``w0 = 30`` and an output
    offset of 0.5. Parameters are named ``layers.{i}.weight`` / ``layers.{i}.bias``.

    Parameters
    ----------
    in_features : int
        Coordinate dimension (2 for images).
    hidden : sequence of int
    out_features : int
        Channels of the fitted signal.
    w0 : float
        Frequency factor of the sines.
    offset : float
        Added to the output, so a zero network predicts mid-grey.
    """

    def __init__(self, in_features: int = 2, hidden=(32, 32), out_features: int = 1,
                 w0: float = 30.0, offset: float = 0.5):
        super().__init__()
        hidden = check_sizes("hidden", hidden)
        if not hidden:
            raise ValueError("hidden must name at least one layer")
        sizes = [check_sizes("in_features", [in_features])[0], *hidden,
                 check_sizes("out_features", [out_features])[0]]
        if not (math.isfinite(w0) and w0 > 0):
            raise ValueError(f"w0 must be positive and finite, got {w0}")
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.w0, self.offset = float(w0), float(offset)
        self.config = {"arch": "siren", "in_features": sizes[0], "hidden": list(hidden),
                       "out_features": sizes[-1], "w0": self.w0, "offset": self.offset}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """SIREN initialisation: U(-1/n, 1/n) first, U(-sqrt(6/n)/w0, sqrt(6/n)/w0) after."""
        for i, layer in enumerate(self.layers):
            n = layer.in_features
            bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / self.w0
            layer.weight.uniform_(-bound, bound)
            layer.bias.uniform_(-1.0 / math.sqrt(n), 1.0 / math.sqrt(n))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords : (N, in_features), usually in [-1, 1] → values (N, out_features)."""
        x = coords
        for layer in self.layers[:-1]:
            x = torch.sin(self.w0 * layer(x))
        return self.layers[-1](x) + self.offset
