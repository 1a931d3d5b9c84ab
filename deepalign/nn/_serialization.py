"""Atomic ``torch.save``: a crash mid-write never leaves a truncated file behind."""
import os
import tempfile

import torch


def atomic_save(obj, path) -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename.

    ``os.replace`` is atomic on POSIX, so readers see either the old file or the new one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
