"""Loading of the compiled extension ``deepalign._C`` and what it was built with."""
import torch

try:
    from deepalign import _C  # importing registers torch.ops.deepalign.*

    _LOAD_ERROR = None
except ImportError as exc:  # reported by `deepalign info` and raised on first use of an op
    _C = None
    _LOAD_ERROR = exc

_PROBE_OP = "deepalign::sinkhorn_project"


def extension_loaded() -> bool:
    """Whether ``deepalign._C`` imported and registered its operators."""
    return _LOAD_ERROR is None


def extension_error():
    """The ``ImportError`` raised while loading ``deepalign._C``, or ``None``."""
    return _LOAD_ERROR


def build_info() -> dict:
    """What ``deepalign._C`` was compiled with: ``abi`` ('stable': the LibTorch stable ABI),
    ``built_with_torch`` (the torch whose headers built it) and ``torch_min`` (the oldest torch
    whose stable ABI it relies on, so the oldest it loads under); empty when it did not load."""
    if _LOAD_ERROR is not None:
        return {}
    return {key: getattr(_C, key, "unknown") for key in ("abi", "built_with_torch", "torch_min")}


def require_extension() -> None:
    """Raise a readable error when the compiled extension is missing or broken."""
    if _LOAD_ERROR is not None:
        raise RuntimeError(
            f"deepalign's compiled extension failed to load ({_LOAD_ERROR}). It needs torch >= "
            f"2.10 (running: {torch.__version__}). Reinstall with `pip install .`, or rebuild the "
            "editable install with `pip install --no-build-isolation -e .` (or "
            "`bash scripts/bootstrap.sh`)."
        ) from _LOAD_ERROR


def compiled_backends() -> list:
    """Dispatch keys ('CPU', 'CUDA') that have deepalign kernels in this build."""
    if _LOAD_ERROR is not None:
        return []
    return [key for key in ("CPU", "CUDA")
            if torch._C._dispatch_has_kernel_for_dispatch_key(_PROBE_OP, key)]


def has_cuda_kernels() -> bool:
    """Whether this build of deepalign contains CUDA kernels."""
    return "CUDA" in compiled_backends()
