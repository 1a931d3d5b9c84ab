"""``deepalign info``: what this installation was built with and can run."""
import torch

from deepalign import ops
from deepalign._version import __version__


def _build_line() -> str:
    built = ops.build_info()
    abi = "LibTorch stable ABI" if built["abi"] == "stable" else f"ABI {built['abi']}"
    return (f"loaded ({abi}: built against torch {built['built_with_torch']}, loads under any "
            f"torch >= {built['torch_min']}; running under torch {torch.__version__})")


def info_lines() -> list:
    backends = ops.compiled_backends()
    cuda_built = "CUDA" in backends
    lines = [
        f"deepalign {__version__}",
        f"torch {torch.__version__} (threads: {torch.get_num_threads()}, "
        f"CUDA runtime: {torch.version.cuda or 'none'}, GPU visible: {torch.cuda.is_available()})",
        "extension deepalign._C: " + (_build_line() if ops.extension_loaded()
                                      else f"NOT LOADED ({ops.extension_error()})"),
        "CPU kernels: " + ("yes" if "CPU" in backends else "no"),
        "CUDA kernels: " + (f"yes (CUDA {torch.version.cuda})" if cuda_built else "no"),
    ]
    return lines


def _run(args) -> int:
    print("\n".join(info_lines()))
    return 0 if ops.extension_loaded() else 1


def register(sub) -> None:
    p = sub.add_parser("info", help="show the build: torch, threads, compiled kernels")
    p.set_defaults(run=_run)
