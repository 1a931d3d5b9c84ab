"""AdamW for many independent models stored as the rows of one flat tensor."""
import math

import torch

_BETAS, _EPS = (0.9, 0.999), 1e-8


class StackedAdamW:
    """AdamW (Loshchilov & Hutter) for ``B`` models at once, each with its own lr and decay.

    All of a model's parameters live in one row of a flat (B, P) leaf, so a step is a handful
    of whole-tensor ops rather than a handful per parameter. Because the loss handed to
    :meth:`step` is a sum of per-model losses, row ``b`` receives exactly model ``b``'s
    gradient, and the update, being element-wise, equals ``torch.optim.AdamW`` run on that
    model alone:

    ``m ← β1 m + (1-β1) g``, ``v ← β2 v + (1-β2) g²``,
    ``θ ← θ (1 - lr·wd) - lr · m̂ / (sqrt(v̂) + ε)`` with bias-corrected ``m̂, v̂``.

    Parameters
    ----------
    stacked : dict of str to Tensor, each shape (B, *param_shape)
        Initial weights.
    lr, weight_decay : Tensor, shape (B,)
    """

    def __init__(self, stacked: dict, lr: torch.Tensor, weight_decay: torch.Tensor):
        B = next(iter(stacked.values())).shape[0]
        self._shapes = {k: v.shape[1:] for k, v in stacked.items()}
        self.flat = torch.cat([v.reshape(B, -1) for v in stacked.values()], 1).requires_grad_()
        self._m, self._v = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self._lr, self._wd = lr.view(B, 1).float(), weight_decay.view(B, 1).float()
        self._t = 0

    def params(self) -> dict:
        """Differentiable views of the current weights, a stacked state dict."""
        return self._unflatten(self.flat)

    def state_dict(self) -> dict:
        """A detached copy of the current weights, a stacked state dict."""
        return {k: v.clone() for k, v in self._unflatten(self.flat.detach()).items()}

    def _unflatten(self, flat: torch.Tensor) -> dict:
        sizes = [math.prod(s) for s in self._shapes.values()]
        return {k: part.reshape(flat.shape[0], *s)
                for (k, s), part in zip(self._shapes.items(), torch.split(flat, sizes, 1))}

    def step(self, losses: torch.Tensor) -> None:
        """One update from ``losses`` : (B,), the per-model losses computed from :meth:`params`."""
        (g,) = torch.autograd.grad(losses.sum(), [self.flat])
        self._t += 1
        b1, b2 = _BETAS
        with torch.no_grad():
            self._m.mul_(b1).add_(g, alpha=1 - b1)
            self._v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self._v / (1 - b2 ** self._t)).sqrt_().add_(_EPS)
            self.flat.mul_(1 - self._lr * self._wd)
            self.flat.sub_(self._m / denom * (self._lr / (1 - b1 ** self._t)))

    def diverged(self) -> list:
        """Indices of the models whose weights are no longer finite."""
        return (~torch.isfinite(self.flat.detach()).all(1)).nonzero().flatten().tolist()
