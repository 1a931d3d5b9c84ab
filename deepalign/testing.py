"""Test helpers shipped with deepalign: random weights and symmetry assertions.

The symmetry claims of Deep-Align (Navon et al., ICML 2024, Props 3.1-3.2) for an aligner
``F`` that maps networks ``(v, v')`` to per-layer matrices ``F_k`` (rows: A's neurons,
columns: B's neurons), with ``g # v`` the network ``v`` with hidden neurons reordered by ``g``
(``deepalign.permute``: ``new[i] = old[g[i]]``):

* equivariance: ``F(g # v, g' # v')[i, j] = F(v, v')[g[i], g'[j]]``, i.e. ``G F G'^T``;
* swap symmetry: ``F(v', v) = F(v, v')^T``.

Check them in float64 (``aligner.double()``) so that a violation is not lost in rounding.
"""
import torch

from deepalign.weightspace import invert_permutations, permute

__all__ = ["assert_aligner_equivariant", "random_state_dict"]


def random_state_dict(model: torch.nn.Module, batch_size: int = None, dtype=torch.float64,
                      generator: torch.Generator = None, scale: float = None) -> dict:
    """Gaussian weights shaped like ``model.state_dict()`` (a batch with ``batch_size``).

    Each floating tensor gets std ``scale`` or, by default, ``1 / sqrt(fan_in)``; integer
    buffers are copied from the model.
    """
    out = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            out[key] = value.clone() if batch_size is None else value.expand(batch_size,
                                                                              *value.shape).clone()
            continue
        shape = tuple(value.shape) if batch_size is None else (batch_size, *value.shape)
        fan_in = value[0].numel() if value.dim() > 1 else value.numel()
        std = scale if scale is not None else fan_in ** -0.5
        out[key] = torch.randn(shape, generator=generator, dtype=dtype) * std
    return out


def _gather2(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[..., rows[i], cols[j]]`` for batched (…, n, n) ``x`` and (…, n) index vectors."""
    x = torch.gather(x, -2, rows[..., :, None].expand_as(x))
    return torch.gather(x, -1, cols[..., None, :].expand_as(x))


def assert_aligner_equivariant(aligner, spec, sd_a: dict, sd_b: dict, n_iters: int = 20,
                               rtol: float = 1e-10, atol: float = 1e-10,
                               generator: torch.Generator = None) -> None:
    """Assert H-equivariance and swap symmetry of a ``DeepAlign``-like aligner.

    Checks, for random hidden permutations ``g, g'``:

    1. similarity logits ``F = aligner(sd_a, sd_b)`` and soft plans
       ``aligner.soft_align(..., n_iters)`` are equivariant: ``F(g#a, g'#b) = G F G'^T``;
    2. the logits are swap-symmetric, ``F(b, a) = F(a, b)^T`` (the soft plans only up to
       Sinkhorn convergence: a finite column-then-row sweep is not transpose-symmetric);
    3. hard perms ``p = aligner.align`` transform accordingly: ``align(g#a, g'#b) =
       g'^{-1} o p o g`` and ``align(b, a) = p^{-1}``.

    The aligner should be in eval mode (no dropout, fixed BatchNorm statistics).

    Parameters
    ----------
    aligner : DeepAlign
    spec : PermutationSpec
    sd_a, sd_b : dict of str to Tensor
        One pair or a batch (leading B) of networks; float64 recommended.
    n_iters : int
        Sinkhorn iterations of the soft check (> 0 exercises the projection).
    rtol, atol : float
        Tolerances of ``torch.testing.assert_close``.
    generator : torch.Generator, optional
        For the random permutations.
    """
    batch, sizes = None, spec.perm_sizes(sd_a, batched=_is_batched(spec, sd_a))
    if _is_batched(spec, sd_a):
        batch = next(iter(sd_a.values())).shape[0]
    g = spec.random_perms(generator, batch, sizes)
    h = spec.random_perms(generator, batch, sizes)
    ga, hb = permute(sd_a, spec, g), permute(sd_b, spec, h)
    tol = {"rtol": rtol, "atol": atol}
    with torch.no_grad():
        for name, fn in (("logits", aligner), ("soft plans", lambda a, b: aligner.soft_align(
                a, b, n_iters=n_iters))):
            base, moved = fn(sd_a, sd_b), fn(ga, hb)
            for k in base:
                torch.testing.assert_close(moved[k], _gather2(base[k], g[k], h[k]), **tol,
                                           msg=lambda m, k=k, name=name:
                                           f"{name} of {k!r} are not equivariant: {m}")
        base, swapped = aligner(sd_a, sd_b), aligner(sd_b, sd_a)
        for k in base:
            torch.testing.assert_close(swapped[k], base[k].mT, **tol,
                                       msg=lambda m, k=k: f"logits of {k!r} are not "
                                       f"swap-symmetric: {m}")
        p, p_moved, p_swap = (aligner.align(sd_a, sd_b), aligner.align(ga, hb),
                              aligner.align(sd_b, sd_a))
        h_inv, p_inv = invert_permutations(h), invert_permutations(p)
        for k in p:
            expected = torch.gather(h_inv[k], -1, torch.gather(p[k], -1, g[k]))
            if not torch.equal(p_moved[k], expected):
                raise AssertionError(f"hard perms of {k!r} are not equivariant")
            if not torch.equal(p_swap[k], p_inv[k]):
                raise AssertionError(f"hard perms of {k!r}: align(b, a) is not align(a, b)^-1")


def _is_batched(spec, sd: dict) -> bool:
    key = next(k for k, axes in spec.axes_to_perm.items() if len(axes))
    return sd[key].dim() > len(spec.axes_to_perm[key])
