"""Rebuild a zoo architecture from its plain-JSON config."""
import torch
from torch import nn

from deepalign.models._cnn import CNN
from deepalign.models._mlp import MLP
from deepalign.models._resnet import ResNet
from deepalign.models._siren import SIREN
from deepalign.models._vit import ViT

_ARCHS = {"mlp": MLP, "cnn": CNN, "siren": SIREN, "resnet": ResNet, "vit": ViT}


def build_model(config: dict) -> nn.Module:
    """Build a fresh (randomly initialised) model from ``model.config``.

    Parameters
    ----------
    config : dict
        ``{"arch": "mlp" | "cnn" | "siren" | "resnet" | "vit", **constructor arguments}``,
        exactly what a model's ``config`` attribute holds (and what a zoo's manifest stores).

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


def example_input(config: dict) -> torch.Tensor:
    """One zero input sample (batch of 1) that a model built from ``config`` accepts.

    What ``PermutationSpec.from_module`` traces with: (1, in_features) for MLPs and SIRENs,
    (1, in_channels, H, W) for CNNs, ResNets and ViTs.
    """
    image = config.get("arch") in ("cnn", "resnet", "vit")
    keys = ("in_channels", "image_size") if image else ("in_features",)
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"config {config!r} lacks {missing}: cannot build an example input")
    if image:
        return torch.zeros(1, config["in_channels"], *config["image_size"])
    return torch.zeros(1, config["in_features"])
