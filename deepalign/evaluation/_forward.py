"""Running many weight sets of one architecture in eval mode, with readable input errors."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

from deepalign.models import batched_forward


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Temporarily put ``model`` in eval mode (BatchNorm uses, never updates, running stats)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def forward_eval(model: torch.nn.Module, stacked_state_dict: Mapping,
                 x: torch.Tensor) -> torch.Tensor:
    """``deepalign.models.batched_forward`` in eval mode; shape errors name the inputs.

    Parameters
    ----------
    model : nn.Module
        Architecture only; its own parameters are not used and not modified.
    stacked_state_dict : dict of str to Tensor, each (B, ...)
    x : Tensor, shape (N, ...)
        Inputs shared by the B networks.

    Returns
    -------
    Tensor (or tuple of Tensors), shape (B, N, ...)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"inputs must be a Tensor, got {type(x).__name__}")
    with eval_mode(model):
        try:
            return batched_forward(model, dict(stacked_state_dict), x)
        except RuntimeError as exc:
            raise ValueError(f"inputs of shape {tuple(x.shape)} {x.dtype} do not run through "
                             f"{type(model).__name__}: {exc}") from exc
