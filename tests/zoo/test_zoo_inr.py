"""INR zoos: SIREN fits of images, several views per image, paired view with view."""
import math

import pytest
import torch

from deepalign.cli import main
from deepalign.data import load_dataset
from deepalign.models import SIREN, batched_forward
from deepalign.zoo import TrainSettings, Zoo, ZooPairs, fit_images, image_grid, train_zoo


def test_image_grid_is_row_major_pixel_centres():
    grid = image_grid(2, 4)
    assert grid.shape == (8, 2)
    torch.testing.assert_close(grid[1], torch.tensor([-0.5, -0.25]))  # row 0, column 1
    assert grid.min() > -1 and grid.max() < 1


def test_fits_reproduce_the_image():
    data = load_dataset("digits")
    images = (data.X_train[:2] * data.std + data.mean).repeat_interleave(2, 0)  # 2 views each
    stacked, records = fit_images(SIREN(2, [32, 32], 1).config, images, [1, 2, 3, 4],
                                  TrainSettings(epochs=60, batch_size=64, lr=1e-3))
    recon = batched_forward(SIREN(2, [32, 32], 1), stacked, image_grid(8, 8))
    mse = (recon - images.flatten(2).transpose(1, 2)).pow(2).mean((1, 2))
    torch.testing.assert_close(mse.double(), torch.tensor([r["mse"] for r in records]).double())
    assert all(r["psnr"] > 25 for r in records)  # a blank guess scores ~8 dB
    # views of one image are different networks
    assert not torch.allclose(stacked["layers.0.weight"][0], stacked["layers.0.weight"][1])


def test_inr_zoo_splits_by_image_and_pairs_views(tmp_path, capsys):
    assert main(["zoo", "--dataset", "digits", "--arch", "siren", "--hidden", "8", "--views", "2",
                 "--count", "20", "--epochs", "2", "--lr", "1e-3", "--chunk-size", "20", "--quiet",
                 "--out", str(tmp_path)]) == 0
    assert "psnr" in capsys.readouterr().out
    zoo = Zoo(tmp_path)
    image = {r["index"]: r["image"] for r in zoo.records}
    for name, part in zoo.split.items():
        others = set().union(*(set(v) for k, v in zoo.split.items() if k != name))
        assert not {image[i] for i in part} & {image[i] for i in others}
    pairs = ZooPairs(zoo, "train")
    for i in range(len(pairs)):
        a, b = pairs[i]
        assert a != b and image[a] == image[b]


@pytest.mark.parametrize("kwargs, match", [
    ({"views": 3}, "divide count"),
    ({"views": 2, "arch": {"arch": "mlp", "in_features": 64, "hidden": [4], "out_features": 10}},
     "only for SIREN"),
    ({"count": 4000, "views": 2}, "only 1437 training images"),
])
def test_bad_views(tmp_path, kwargs, match):
    args = {"arch": SIREN(2, [4], 1).config, "count": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_zoo(str(tmp_path), "digits", args.pop("arch"), args.pop("count"),
                  TrainSettings(epochs=1), progress=False, **args)


def test_mismatched_channels():
    with pytest.raises(ValueError, match="out_features=1"):
        fit_images(SIREN(2, [4], 3).config, torch.rand(1, 1, 4, 4), [0], TrainSettings(epochs=1))
    assert math.isfinite(fit_images(SIREN(2, [4], 1).config, torch.rand(1, 1, 4, 4), [0],
                                    TrainSettings(epochs=1))[1][0]["psnr"])
