"""Numerical proof that a permuted network computes the same function."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from deepalign.evaluation._forward import forward_eval
from deepalign.weightspace._permute import batch_size_of, permute
from deepalign.weightspace._spec import PermutationSpec


def check_equivalent(model: torch.nn.Module, state_dict: Mapping, spec: PermutationSpec,
                     perms: Mapping, inputs: torch.Tensor, rtol: float = 1e-7,
                     atol: float = 1e-9) -> float:
    """Check on ``inputs`` that ``permute(state_dict, spec, perms)`` computes the same outputs.

    The forward runs in float64 and eval mode (BatchNorm on its running statistics), so a
    wrong spec shows as an O(1) difference while a right one agrees to rounding.

    Parameters
    ----------
    model : nn.Module
        The architecture (its own weights are not used).
    state_dict : dict of str to Tensor
        One state_dict, or a batch stacked along a leading dimension B.
    spec : PermutationSpec
    perms : dict of str to Tensor
        Hard perms, ``(n,)`` or ``(B, n)`` (soft perms do not preserve the function).
    inputs : Tensor, shape (N, ...)
        Floating inputs run in float64; integer inputs (token ids) are passed as they are.

    Returns
    -------
    float
        The largest absolute output difference.

    Raises
    ------
    AssertionError
        When some output differs by more than ``atol + rtol * |output|``.
    """
    if any(p.is_floating_point() for p in perms.values()):
        raise ValueError("check_equivalent needs hard perms (int64 index tensors); soft perms "
                         "do not preserve the network function")
    batch, _ = batch_size_of(state_dict, spec)
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in state_dict.items()}
    permuted = permute(sd64, spec, perms)
    perms_batched = any(p.dim() == 2 for p in perms.values())
    if batch is None:
        sd64 = {k: v[None] for k, v in sd64.items()}
        if not perms_batched:
            permuted = {k: v[None] for k, v in permuted.items()}
    width = next(iter(permuted.values())).shape[0]
    sd64 = {k: v.expand(width, *v.shape[1:]) for k, v in sd64.items()}
    x = inputs.double() if inputs.is_floating_point() else inputs  # token ids stay ints
    with torch.no_grad():
        before = forward_eval(model, sd64, x)
        after = forward_eval(model, permuted, x)
    diff = (before - after).abs()
    bound = atol + rtol * before.abs()
    if not bool((diff <= bound).all()):
        worst = int((diff - bound).flatten().argmax())
        was, now = before.flatten()[worst].item(), after.flatten()[worst].item()
        raise AssertionError(
            f"the permuted network differs: max |difference| {diff.max().item():.3e} "
            f"(output {was:.6g} vs {now:.6g}); the spec does not describe this model's "
            "symmetry, or the perms are wrong")
    return diff.max().item()
