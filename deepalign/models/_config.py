"""Rebuild a zoo architecture from its plain-JSON config."""
from torch import nn

from deepalign.models._cnn import CNN
from deepalign.models._mlp import MLP
from deepalign.models._siren import SIREN

_ARCHS = {"mlp": MLP, "cnn": CNN, "siren": SIREN}


def build_model(config: dict) -> nn.Module:
    """Build a fresh (randomly initialised) model from ``model.config``.

    Parameters
    ----------
    config : dict
        ``{"arch": "mlp" | "cnn" | "siren", **constructor arguments}``, exactly what a model's
        ``config`` attribute holds (and what a zoo's manifest stores).

    Returns
    -------
    nn.Module
        Its ``config`` equals ``config``, and its ``state_dict`` keys are the zoo's keys.
    """
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(f"config must be a dict with an 'arch' key, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    arch = _ARCHS.get(config["arch"])
    if arch is None:
        raise ValueError(f"unknown arch {config['arch']!r}; choose one of {', '.join(_ARCHS)}")
    try:
        return arch(**kwargs)
    except TypeError as exc:
        raise ValueError(f"config does not fit {arch.__name__}: {exc}") from exc
