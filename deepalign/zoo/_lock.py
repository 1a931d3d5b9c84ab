"""An advisory lock that serialises the processes filling one zoo directory."""
import contextlib
import fcntl
import os


@contextlib.contextmanager
def directory_lock(directory: str):
    """Hold an exclusive ``flock`` on ``directory/.lock`` (seen by all processes on one host)."""
    with open(os.path.join(directory, ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
