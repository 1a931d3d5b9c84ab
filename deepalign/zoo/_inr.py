"""INR zoos: SIREN fits of images, several independently initialised fits ("views") each.

As in the paper's INR experiments, a view is one SIREN fitted to one image from its own
random initialisation; the views of one image are the natural pairs to align.
"""
import math

import torch

from deepalign.data import load_dataset
from deepalign.models import batched_forward
from deepalign.zoo._train import TrainSettings, fit


def image_grid(height: int, width: int) -> torch.Tensor:
    """Pixel-centre coordinates in ``[-1, 1]²``, row-major.

    Returns
    -------
    Tensor, shape (height * width, 2)
        ``(y, x)`` of pixel ``(r, c)`` at row ``r * width + c``.
    """
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    return torch.cartesian_prod(ys, xs)


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).flatten(1).mean(1)


def fit_images(config: dict, images: torch.Tensor, seeds: list, settings: TrainSettings,
               on_epoch=None) -> tuple:
    """Fit one SIREN per (image, seed) pair, all at once (mean squared error, AdamW).

    An epoch visits every pixel of the model's image once, ``batch_size`` pixels per step,
    in the model's own order.

    Parameters
    ----------
    config : dict
        A :class:`~deepalign.models.SIREN` config with ``in_features == 2`` and
        ``out_features == C``.
    images : Tensor, shape (B, C, H, W)
        Image ``b`` is the target of model ``b``, values in ``[0, 1]``.
    seeds : list of B int
    settings : TrainSettings

    Returns
    -------
    stacked : dict of str to Tensor, each shape (B, *param_shape)
    records : list of dict
        Per model: ``seed``, ``lr``, ``weight_decay``, ``mse`` (over all pixels) and ``psnr``
        (dB, for a peak value of 1).
    """
    B, C, H, W = images.shape
    if B != len(seeds):
        raise ValueError(f"got {B} images for {len(seeds)} seeds")
    if config.get("in_features") != 2 or config.get("out_features") != C:
        raise ValueError(f"an INR of {C}-channel images needs in_features=2, out_features={C}; "
                         f"got {config}")
    coords, target = image_grid(H, W), images.flatten(2).transpose(1, 2)  # (HW, 2), (B, HW, C)
    model, stacked, hparams = fit(config, seeds, settings, coords, target, _mse,
                                  per_model_targets=True, on_epoch=on_epoch)
    with torch.no_grad():
        mse = _mse(batched_forward(model, stacked, coords), target)
    return stacked, [{"seed": seeds[i], "lr": hparams[i][0], "weight_decay": hparams[i][1],
                      "mse": mse[i].item(), "psnr": -10 * math.log10(max(mse[i].item(), 1e-12))}
                     for i in range(B)]


def target_images(data, indices, views: int) -> torch.Tensor:
    """The training images models ``indices`` of an INR zoo fit (model ``i`` fits image
    ``i // views``), back in ``[0, 1]``: shape (len(indices), C, H, W)."""
    return data.X_train[[i // views for i in indices]] * data.std + data.mean


def fitted_images(zoo, indices) -> tuple:
    """What the INRs ``indices`` of an INR zoo were fitted to, as regression data.

    Returns
    -------
    coords : Tensor, shape (H * W, 2)
        The shared inputs (:func:`image_grid`).
    targets : Tensor, shape (len(indices), H * W, C)
        Model ``indices[k]``'s image, values in ``[0, 1]``.
    """
    if not zoo.fits_images:
        raise ValueError(f"zoo {zoo.path} holds classifiers, not INR fits of images")
    images = target_images(load_dataset(zoo.dataset), indices, zoo.manifest["training"]["views"])
    return image_grid(*images.shape[2:]), images.flatten(2).transpose(1, 2)
