"""The on-disk zoo: safetensors shards of stacked state dicts plus a JSON manifest.

Layout of a zoo directory::

    manifest.json                          architecture, data set, training settings, split,
                                           the shard list (with sizes and SHA-256) and the
                                           per-model records (seed, hyper-parameters, metrics)
    models-0000000-0000100.safetensors     models [0, 100): every state-dict key stacked on a
                                           leading model axis; the shard's own records are in
                                           its safetensors metadata, so shards written by
                                           several processes merge into one manifest

The manifest is always rebuilt from the shards present (under a directory lock), so it cannot
miss a shard that some process finished; every file is written atomically.
"""
import glob
import hashlib
import json
import os
import re

from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from deepalign._io import write_bytes_atomic, write_json_atomic
from deepalign.zoo._lock import directory_lock

FORMAT = "deepalign-zoo"
VERSION = 1
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^models-(\d{7})-(\d{7})\.safetensors$")
# The header keys that must agree between the runs and ranks that fill one zoo.
HEADER_KEYS = ("arch", "dataset", "count", "keys", "shapes", "split", "training")


class ZooFormatError(ValueError):
    """A zoo file is missing, truncated, corrupt or disagrees with the manifest; names the file."""


def shard_name(start: int, stop: int) -> str:
    """File name of the shard holding models ``[start, stop)``."""
    return f"models-{start:07d}-{stop:07d}.safetensors"


def write_shard(directory: str, start: int, tensors: dict, records: list) -> str:
    """Write models ``[start, start + n)`` atomically; returns the file path.

    Parameters
    ----------
    tensors : dict of str to Tensor, each shape (n, *param_shape)
    records : list of n dicts
        JSON-serialisable per-model records (``index``, seed, hyper-parameters, metrics).
    """
    n = len(records)
    if any(t.shape[0] != n for t in tensors.values()):
        raise ValueError(f"every tensor needs a leading axis of {n} models")
    path = os.path.join(directory, shard_name(start, start + n))
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": FORMAT, "start": str(start), "stop": str(start + n),
            "models": json.dumps(records)}
    write_bytes_atomic(path, safetensors_save(tensors, metadata=meta))
    return path


# Shards are immutable once written, so a process hashes each one only once.
_HASHES = {}


def _sha256(path: str) -> str:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _shard_summary(path: str, header: dict) -> tuple:
    name = os.path.basename(path)
    m = _SHARD_RE.match(name)
    start, stop = int(m.group(1)), int(m.group(2))
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own, untyped errors
        raise ZooFormatError(f"{path}: not a readable safetensors shard ({exc})") from exc
    found = (meta.get("format"), meta.get("start"), meta.get("stop"))
    if found != (FORMAT, str(start), str(stop)):
        raise ZooFormatError(f"{path}: metadata does not match its name (start/stop/format)")
    want = {k: [stop - start, *s] for k, s in header["shapes"].items()}
    if shapes != want:
        raise ZooFormatError(f"{path}: tensors {shapes} disagree with the manifest's {want}")
    records = json.loads(meta["models"])
    if [r.get("index") for r in records] != list(range(start, stop)):
        raise ZooFormatError(f"{path}: model records do not cover indices [{start}, {stop})")
    entry = {"file": name, "start": start, "stop": stop, "bytes": os.path.getsize(path),
             "sha256": _sha256(path)}
    return entry, records


def update_manifest(directory: str, header: dict) -> dict:
    """Rebuild ``manifest.json`` from ``header`` and the shards now present; returns it.

    Several processes may call this at once: the directory lock serialises the rebuilds and
    each one rescans the shards, so the last one sees every shard written before it.
    """
    with directory_lock(directory):
        shards, records = [], []
        for path in sorted(glob.glob(os.path.join(directory, "models-*.safetensors"))):
            if _SHARD_RE.match(os.path.basename(path)):
                entry, recs = _shard_summary(path, header)
                shards.append(entry)
                records.extend(recs)
        covered = 0
        for entry in shards:
            if entry["start"] < covered:
                raise ZooFormatError(
                    f"{os.path.join(directory, entry['file'])} overlaps another shard")
            covered = entry["stop"]
        if covered > header["count"]:
            raise ZooFormatError(f"{directory}: shards hold models up to {covered}, "
                                 f"but the zoo has {header['count']}")
        manifest = {"format": FORMAT, "version": VERSION, **header,
                    "complete": len(records) == header["count"], "shards": shards,
                    "models": records}
        write_json_atomic(os.path.join(directory, MANIFEST), manifest)
    return manifest


def read_manifest(directory: str) -> dict:
    """Read and sanity-check ``directory/manifest.json``."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise ZooFormatError(f"{path} not found: {directory!r} is not a zoo directory")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooFormatError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZooFormatError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ZooFormatError(f"{path}: format version {manifest.get('version')}, "
                             f"this deepalign reads {VERSION}")
    missing = [k for k in (*HEADER_KEYS, "shards", "models", "complete") if k not in manifest]
    if missing:
        raise ZooFormatError(f"{path}: missing fields {missing}")
    return manifest


def ensure_header(directory: str, header: dict) -> None:
    """Create the zoo directory, or check that an existing zoo there was made with ``header``."""
    os.makedirs(directory, exist_ok=True)
    if os.path.isfile(os.path.join(directory, MANIFEST)):
        old = read_manifest(directory)
        # compare as JSON, so tuples equal lists
        diff = [k for k in HEADER_KEYS
                if json.loads(json.dumps(old[k])) != json.loads(json.dumps(header[k]))]
        if diff:
            raise ValueError(f"{directory} already holds a zoo made with different "
                             f"{', '.join(diff)}; "
                             "use another --out or the original settings to resume")
    else:
        update_manifest(directory, header)
