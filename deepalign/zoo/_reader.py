"""Read a zoo directory: stacked state dicts, single state dicts, split and metrics."""
import bisect
import hashlib
import os

import torch
from safetensors.torch import load as safetensors_load

from deepalign.models import build_model, example_input
from deepalign.weightspace import PermutationSpec
from deepalign.zoo._format import ZooFormatError, read_manifest


class Zoo:
    """A model zoo on disk (see :mod:`deepalign.zoo._format` for the layout).

    Shards are read lazily, checked against the manifest's size and SHA-256, and cached.

    Parameters
    ----------
    path : str
        The zoo directory.
    allow_incomplete : bool
        Open a zoo whose training has not finished; only the models already written are
        available (``indices`` lists them).

    Attributes
    ----------
    config : dict
        The architecture; ``build_model()`` rebuilds it.
    dataset : str or None
        The data set the models were trained on.
    split : dict of str to list of int
        ``"train"``, ``"val"``, ``"test"``: model indices.
    records : list of dict
        Per-model seed, hyper-parameters and metrics, ordered by index.
    """

    def __init__(self, path: str, allow_incomplete: bool = False):
        self.path = os.fspath(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest["complete"] and not allow_incomplete:
            raise ZooFormatError(
                f"{os.path.join(self.path, 'manifest.json')}: the zoo is incomplete "
                f"({len(self.manifest['models'])} of {self.manifest['count']} models); re-run the "
                "command that made it to finish, or pass allow_incomplete=True")
        self.config = self.manifest["arch"]
        self.dataset = self.manifest["dataset"]
        self.split = {k: list(v) for k, v in self.manifest["split"].items()}
        self.records = self.manifest["models"]
        self.indices = [r["index"] for r in self.records]
        self.keys = list(self.manifest["keys"])
        self._shards = self.manifest["shards"]
        self._starts = [s["start"] for s in self._shards]
        self._cache = {}

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return (f"Zoo({self.path!r}: {len(self.records)}/{len(self)} {self.config['arch']} models "
                f"on {self.dataset})")

    def build_model(self) -> torch.nn.Module:
        """A fresh module of the zoo's architecture, in eval mode (BatchNorm on running stats).

        Its state_dict keys are ``self.keys``."""
        return build_model(self.config).eval()

    def spec(self):
        """The zoo architecture's ``PermutationSpec`` (``PermutationSpec.from_module``, via ``torch.export``)."""
        return PermutationSpec.from_module(self.build_model(), example_input(self.config))

    @property
    def fits_images(self) -> bool:
        """True for INR zoos (model ``i`` fits training image ``i // views``)."""
        return self.manifest["training"].get("task") == "fit-images"

    @property
    def main_metric(self) -> str:
        """The per-model quality measure: ``"test_acc"`` for classifiers, ``"psnr"`` for INRs."""
        return "psnr" if self.config["arch"] == "siren" else "test_acc"

    def metric(self, name: str) -> torch.Tensor:
        """Per-model values of a record field (e.g. ``"test_acc"``), shape (models present,)."""
        if not self.records or name not in self.records[0]:
            raise KeyError(f"no per-model metric {name!r} in {self.path}")
        return torch.tensor([r[name] for r in self.records], dtype=torch.float64)

    def _shard(self, k: int) -> dict:
        if k not in self._cache:
            entry = self._shards[k]
            path = os.path.join(self.path, entry["file"])
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise ZooFormatError(f"{path}: cannot read shard ({exc})") from exc
            if len(data) != entry["bytes"]:
                raise ZooFormatError(f"{path}: {len(data)} bytes, the manifest says "
                                     f"{entry['bytes']} "
                                     "(truncated or replaced)")
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ZooFormatError(f"{path}: SHA-256 differs from the manifest (corrupt)")
            try:
                tensors = safetensors_load(data)
            except Exception as exc:  # safetensors raises its own, untyped errors
                raise ZooFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
            if sorted(tensors) != sorted(self.keys):
                raise ZooFormatError(f"{path}: keys {sorted(tensors)} differ from the manifest")
            self._cache[k] = tensors
        return self._cache[k]

    def _locate(self, i: int) -> tuple:
        i = int(i)
        k = bisect.bisect_right(self._starts, i) - 1
        if not 0 <= i < len(self) or k < 0 or i >= self._shards[k]["stop"]:
            raise IndexError(f"model {i} is not in {self!r}")
        return k, i - self._shards[k]["start"]

    def stacked(self, indices=None) -> dict:
        """A batch of state dicts: every key stacked on a leading model axis.

        Parameters
        ----------
        indices : sequence of int or 1-D Tensor, optional
            Model indices (e.g. ``zoo.split["train"]``); default all models present.

        Returns
        -------
        dict of str to Tensor, each shape (len(indices), *param_shape)
        """
        indices = self.indices if indices is None else [int(i) for i in indices]
        where = [self._locate(i) for i in indices]
        out = {}
        for key in self.keys:
            out[key] = torch.stack([self._shard(k)[key][j] for k, j in where]) if where else \
                torch.empty(0, *self.manifest["shapes"][key])
        return out

    def state_dict(self, i: int) -> dict:
        """The state dict of model ``i`` (loadable into ``build_model()``)."""
        k, j = self._locate(i)
        shard = self._shard(k)
        return {key: shard[key][j].clone() for key in self.keys}
