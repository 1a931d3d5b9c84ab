"""AdamW for many independent models whose parameters are stacked along a leading axis."""
import torch

_BETAS, _EPS = (0.9, 0.999), 1e-8


class StackedAdamW:
    """AdamW (Loshchilov & Hutter) for ``B`` models at once, each with its own lr and decay.

    Each parameter is one (B, *param_shape) leaf. Because the loss handed to :meth:`step` is a
    sum of per-model losses, row ``b`` of every leaf receives exactly model ``b``'s gradient,
    and the update, being element-wise, equals ``torch.optim.AdamW`` run on that model alone:

    ``m ← β1 m + (1-β1) g``, ``v ← β2 v + (1-β2) g²``,
    ``θ ← θ (1 - lr·wd) - lr · m̂ / (sqrt(v̂) + ε)`` with bias-corrected ``m̂, v̂``.

    The update is the fused kernel behind ``torch.optim.AdamW(fused=True)``: one pass over
    θ, g, m and v, where a dozen whole-tensor ops took longer on CPU than the forward and
    backward passes of a Fashion-MNIST MLP zoo. The kernel takes a single ``(lr, wd)``; when
    models differ in them, it writes the Adam direction ``-m̂ / (sqrt(v̂) + ε)`` into a scratch
    tensor instead, which two broadcast passes then apply with each model's lr and decay.

    Parameters
    ----------
    stacked : dict of str to Tensor, each shape (B, *param_shape)
        Initial weights.
    lr, weight_decay : Tensor, shape (B,)
    """

    def __init__(self, stacked: dict, lr: torch.Tensor, weight_decay: torch.Tensor):
        self._params = {k: v.detach().clone(memory_format=torch.contiguous_format)
                        .requires_grad_() for k, v in stacked.items()}
        self._m = [torch.zeros_like(p) for p in self._params.values()]
        self._v = [torch.zeros_like(p) for p in self._params.values()]
        shared = set(zip(lr.tolist(), weight_decay.tolist()))
        self._shared = shared.pop() if len(shared) == 1 else None
        self._lr_wd, self._factor = (lr, weight_decay), None
        if self._shared is None:
            self._direction = [torch.zeros_like(p) for p in self._params.values()]
            self._scale(1.0)
        self._step = torch.zeros(())

    def _scale(self, factor: float) -> None:
        """Per-model step sizes and decays for learning rates ``factor * lr``."""
        if factor == self._factor:
            return
        lr, weight_decay = self._lr_wd[0] * factor, self._lr_wd[1]
        column = [(-1,) + (1,) * (p.dim() - 1) for p in self._params.values()]
        self._lr = [lr.float().view(s) for s in column]
        self._decay = [(1 - lr * weight_decay).float().view(s) for s in column]
        self._factor = factor

    def params(self) -> dict:
        """The current weights (differentiable leaves), a stacked state dict."""
        return self._params

    def state_dict(self) -> dict:
        """A detached copy of the current weights, a stacked state dict."""
        return {k: v.detach().clone() for k, v in self._params.items()}

    def step(self, losses: torch.Tensor, lr_factor: float = 1.0) -> None:
        """One update from ``losses`` : (B,), the per-model losses computed from :meth:`params`,
        with every learning rate multiplied by ``lr_factor`` (a schedule's value)."""
        leaves = list(self._params.values())
        grads = [g.contiguous() for g in torch.autograd.grad(losses.sum(), leaves)]
        self._step += 1
        params = [p.detach() for p in leaves]
        if self._shared is not None:
            lr, weight_decay = self._shared
            self._adamw(params, grads, lr * lr_factor, weight_decay)
            return
        self._scale(lr_factor)
        for d in self._direction:
            d.zero_()
        self._adamw(self._direction, grads, 1.0, 0.0)
        for p, d, lr, decay in zip(params, self._direction, self._lr, self._decay):
            p.mul_(decay).addcmul_(d, lr)

    def _adamw(self, params: list, grads: list, lr: float, weight_decay: float) -> None:
        torch._fused_adamw_(params, grads, self._m, self._v, [], [self._step] * len(params),
                            lr=lr, beta1=_BETAS[0], beta2=_BETAS[1], weight_decay=weight_decay,
                            eps=_EPS, amsgrad=False, maximize=False)

    def diverged(self) -> list:
        """Indices of the models whose weights are no longer finite."""
        finite = torch.stack([p.detach().flatten(1).isfinite().all(1)
                              for p in self._params.values()]).all(0)
        return (~finite).nonzero().flatten().tolist()
