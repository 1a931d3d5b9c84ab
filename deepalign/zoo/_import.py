"""Turn a folder of saved ``state_dict`` files into a zoo (including the Deep-Align authors' zoos).

The authors released each zoo as a folder of ``.pth`` state dicts (an MLP's keys are
``seq.0.weight, seq.0.bias, seq.2.weight, ...``; a ``label`` entry carries metrics such as
``test_loss``) plus a JSON file ``{"train": [paths], "val": [...], "test": [...]}`` whose paths
point into the folder on *their* machine; paths are therefore matched by their longest
suffix that names a file in the folder.
"""
import glob
import json
import os
from pathlib import PurePath

import torch

from deepalign.models import build_model
from deepalign.zoo._build import split_models
from deepalign.zoo._format import ensure_header, shard_name, update_manifest, write_shard
from deepalign.zoo._reader import Zoo


def _load(path: str) -> tuple:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise ValueError(f"{path}: cannot load as a state dict ({exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = {**obj["state_dict"], **({"label": obj["label"]} if "label" in obj else {})}
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    label = obj.pop("label", None)
    record = {}
    for name, value in (label.items() if isinstance(label, dict) else [("label", label)]):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            record[name] = value
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries {bad} are not tensors")
    return obj, record


def infer_arch(state_dict: dict) -> dict:
    """The :class:`~deepalign.models.MLP` config of a chain of Linear (weight, bias) pairs.

    Raises a ValueError for anything else (CNN pooling cannot be read from the weights:
    pass ``arch=`` to :func:`import_zoo`).
    """
    tensors = list(state_dict.values())
    if len(tensors) < 2 or len(tensors) % 2 or any(
            w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[0]
            for w, b in zip(tensors[::2], tensors[1::2])):
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError("cannot infer the architecture: expected alternating Linear weight "
                         f"(out, in) and bias (out,) tensors, got {shapes}; pass arch= "
                         "(a model config)")
    weights = tensors[::2]
    for a, b in zip(weights[:-1], weights[1:]):
        if b.shape[1] != a.shape[0]:
            raise ValueError(f"layer shapes {tuple(a.shape)} → {tuple(b.shape)} do not chain")
    return {"arch": "mlp", "in_features": weights[0].shape[1],
            "hidden": [w.shape[0] for w in weights[:-1]], "out_features": weights[-1].shape[0]}


def _find_split_file(source: str):
    found = []
    for path in sorted(glob.glob(os.path.join(source, "*.json"))):
        try:
            with open(path) as f:
                obj = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and {"train", "test"} <= set(obj):
            found.append(path)
    if len(found) > 1:
        raise ValueError(f"several split files in {source}: {found}; pass split_file=")
    return found[0] if found else None


def _match_split(split_file: str, files: list) -> dict:
    try:
        with open(split_file) as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{split_file}: cannot read the JSON split ({exc})") from exc
    by_suffix = {}
    for i, rel in enumerate(files):
        parts = PurePath(rel).parts
        for k in range(1, len(parts) + 1):
            by_suffix.setdefault(parts[-k:], set()).add(i)
    split = {}
    for name in ("train", "val", "test"):
        split[name] = []
        for entry in raw.get(name, []):
            parts = PurePath(entry).parts
            hit = next((by_suffix[parts[-k:]] for k in range(len(parts), 0, -1)
                        if len(by_suffix.get(parts[-k:], ())) == 1), None)
            if hit is None:
                raise ValueError(f"{split_file}: {name} entry {entry!r} matches no single file")
            split[name].append(next(iter(hit)))
    return {k: sorted(v) for k, v in split.items()}


def import_zoo(source: str, out: str, split_file=None, dataset=None, arch=None, seed: int = 0,
               chunk_size: int = 1000) -> Zoo:
    """Import every ``.pt``/``.pth`` state dict under ``source`` as a zoo in ``out``.

    Parameters
    ----------
    source : str
        Folder searched recursively; files are ordered by relative path (= model index).
    out : str
        The zoo directory to write.
    split_file : str, optional
        JSON ``{"train": [...], "val": [...], "test": [...]}`` of file paths. Default: the one
        JSON file of that shape in ``source``, else a seeded 80/10/10 split.
    dataset : str, optional
        Recorded in the manifest.
    arch : dict, optional
        Model config; inferred for MLPs. The files' tensors are mapped onto its state-dict keys
        in order, with matching shapes.
    seed : int
        Seed of the default split.

    Returns
    -------
    Zoo
    """
    files = sorted(os.path.relpath(p, source) for ext in ("pt", "pth")
                   for p in glob.glob(os.path.join(source, "**", f"*.{ext}"), recursive=True))
    if not files:
        raise ValueError(f"no .pt or .pth files under {source!r}")
    first, _ = _load(os.path.join(source, files[0]))
    model = build_model(arch if arch is not None else infer_arch(first))
    template = model.state_dict()
    src_shapes = [tuple(v.shape) for v in first.values()]
    if src_shapes != [tuple(v.shape) for v in template.values()]:
        raise ValueError(f"{files[0]}: tensor shapes {src_shapes} do not map onto {model.config}")
    split_file = split_file or _find_split_file(source)
    split = _match_split(split_file, files) if split_file else split_models(len(files), seed)
    header = {"arch": model.config, "dataset": dataset, "count": len(files),
              "keys": list(template), "shapes": {k: list(v.shape) for k, v in template.items()},
              "split": split,
              "training": {"imported_from": os.path.abspath(source),
                           "split_file": split_file and os.path.abspath(split_file)}}
    ensure_header(out, header)
    for start in range(0, len(files), chunk_size):
        stop = min(start + chunk_size, len(files))
        if os.path.isfile(os.path.join(out, shard_name(start, stop))):
            continue
        sds, records = [], []
        for i in range(start, stop):
            sd, record = _load(os.path.join(source, files[i]))
            shapes = [tuple(v.shape) for v in sd.values()]
            if shapes != src_shapes:
                raise ValueError(f"{files[i]}: tensor shapes {shapes} differ from "
                                 f"{files[0]}'s {src_shapes}")
            sds.append(list(sd.values()))
            records.append({"index": i, "file": files[i], **record})
        stacked = {k: torch.stack([sd[j] for sd in sds]).float() for j, k in enumerate(template)}
        write_shard(out, start, stacked, records)
    update_manifest(out, header)
    return Zoo(out)
