"""Crash-safe file writes and state_dict files: a kill leaves the old file or the new one."""
import io
import json
import os
import tempfile

import torch


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file beside it, fsync and ``os.replace``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # The rename itself must reach the disk, or a power cut could still lose the file.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def save_atomic(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_state_dict(path) -> dict:
    """A ``state_dict`` from a ``.pt``/``.pth`` (torch.save) or ``.safetensors`` file.

    Raises
    ------
    ValueError
        When the file does not hold a flat mapping of names to tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such state_dict file: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return dict(obj)


def save_state_dict(state_dict: dict, path) -> None:
    """Write a ``state_dict`` atomically as ``.safetensors`` or, otherwise, with torch.save."""
    path = os.fspath(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save
        write_bytes_atomic(path, save(tensors))
    else:
        save_atomic(tensors, path)
