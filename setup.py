"""Build of the compiled extension ``deepalign._C``.

The extension uses the LibTorch stable ABI only (``torch/csrc/stable``, ``torch/headeronly``),
compiled for the stable ABI of ``TORCH_MIN`` and the limited Python API: one binary loads under
every torch from ``TORCH_MIN`` on and every CPython from 3.10 on, so pip's isolated build (which
compiles against the torch named in pyproject.toml's ``[build-system] requires``) is fine:
``pip install .``. ``pip install --no-build-isolation -e .`` is the developer's editable install.

CPU kernels are always built. CUDA kernels are added when torch has CUDA and a GPU is
visible, or when ``FORCE_CUDA=1``; ``FORCE_CPU=1`` skips them. ``DEEPALIGN_NO_EXTENSION=1``
builds no extension at all (``scripts/bootstrap.sh`` installs the package that way, then builds
the extension in place, incrementally).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

# The oldest torch whose stable ABI the binary relies on (TORCH_TARGET_VERSION below); the
# runtime dependency in pyproject.toml says torch>= the same version.
TORCH_MIN = (2, 10)
# The oldest CPython of the limited API (abi3) the binary uses; requires-python says the same.
PYTHON_MIN = (3, 10)

try:
    import torch
except ImportError:
    sys.exit(
        "deepalign: building the extension needs torch in the build environment.\n"
        "`pip install .` provides it (see [build-system] in pyproject.toml); without build\n"
        "isolation, install torch first:\n"
        f"    pip install 'torch>={TORCH_MIN[0]}.{TORCH_MIN[1]}'\n"
        "    pip install --no-build-isolation -e .\n"
        "(or run `bash scripts/bootstrap.sh`, which does both in .venv)."
    )


def _torch_version(version):
    """(major, minor) of a torch version string such as '2.13.0+cpu'."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


if _torch_version(torch.__version__) < TORCH_MIN:
    sys.exit(
        f"deepalign: the extension needs torch >= {TORCH_MIN[0]}.{TORCH_MIN[1]} (its LibTorch "
        f"stable ABI); the build environment has torch {torch.__version__}.\n"
        f"Upgrade it: pip install 'torch>={TORCH_MIN[0]}.{TORCH_MIN[1]}'"
    )


def _say(msg):
    print(f"deepalign setup: {msg}", flush=True)


def _cuda_home_from_nvcc():
    """Toolkit root of the nvcc on PATH, following symlinks and wrapper scripts."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    # `nvcc --dryrun` prints the folder of the real binary as _HERE_, whatever wraps it.
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
        here = re.search(r"^#\$ _HERE_=(.*)$", out, re.M)
        if here:
            return os.path.realpath(os.path.join(here.group(1).strip(), ".."))
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _want_cuda():
    if os.environ.get("FORCE_CPU") == "1":
        _say("FORCE_CPU=1: building CPU kernels only")
        return False
    forced = os.environ.get("FORCE_CUDA") == "1"
    if torch.version.cuda is None:
        if forced:
            sys.exit("deepalign setup: FORCE_CUDA=1 but the installed torch "
                     f"({torch.__version__}) has no CUDA support; install a CUDA build of torch "
                     "or drop FORCE_CUDA.")
        _say(f"torch {torch.__version__} has no CUDA: building CPU kernels only")
        return False
    if not (forced or torch.cuda.is_available()):
        _say("torch has CUDA but no GPU is visible and FORCE_CUDA is not set: CPU kernels only")
        return False
    return True


def _cuda_wheel_includes():
    """Headers of pip's nvidia-* wheels (cusparse.h, cublasLt.h …) that ATen's CUDA headers include."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "*", "include")))


def _target_version_flag():
    """The stable ABI version the binary is compiled for: TORCH_MIN's, whatever torch builds it."""
    return f"-DTORCH_TARGET_VERSION=0x{TORCH_MIN[0]:02x}{TORCH_MIN[1]:02x}000000000000"


def _abi_macros():
    """Defines that pin the binary to the stable ABI of TORCH_MIN and say what it was built with.

    (cpp_extension itself adds -DPy_LIMITED_API=0x030A0000, CPython 3.10's, for py_limited_api.)
    """
    built_with = torch.__version__.split("+")[0]
    return [
        _target_version_flag(),
        f'-DDEEPALIGN_BUILT_WITH_TORCH="{built_with}"',
        f'-DDEEPALIGN_TORCH_MIN="{TORCH_MIN[0]}.{TORCH_MIN[1]}"',
    ]


def _extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -g0: Python's CFLAGS ask for debug info, which would make the wheel six times larger.
    cxx = ["-O3", "-g0"] + _abi_macros()
    link = []
    if "OpenMP" in torch.__config__.parallel_info():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    # Headers as dependencies: setuptools rebuilds when one changed, and ninja then recompiles
    # only the files that include it.
    headers = sorted(glob.glob("csrc/**/*.h", recursive=True)
                     + glob.glob("csrc/**/*.cuh", recursive=True))
    kwargs = dict(include_dirs=[os.path.abspath("csrc")], extra_link_args=link, depends=headers,
                  py_limited_api=True)
    if not _want_cuda():
        return CppExtension("deepalign._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    if "CUDA_HOME" not in os.environ:
        home = _cuda_home_from_nvcc()
        if home is None:
            sys.exit("deepalign setup: CUDA build requested but no nvcc on PATH and CUDA_HOME unset")
        os.environ["CUDA_HOME"] = home
        import torch.utils.cpp_extension as ce
        ce.CUDA_HOME = home
    _say(f"building CPU + CUDA kernels (torch CUDA {torch.version.cuda}, "
         f"CUDA_HOME={os.environ['CUDA_HOME']}, "
         f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<torch default>')})")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    kwargs["include_dirs"] += _cuda_wheel_includes()
    return CUDAExtension("deepalign._C", sources,
                         extra_compile_args={"cxx": cxx + ["-DUSE_CUDA"],
                                             "nvcc": ["-O3", "-lineinfo", "-DUSE_CUDA"]
                                             + _abi_macros()},
                         **kwargs)


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    if os.environ.get("DEEPALIGN_NO_EXTENSION") == "1":
        _say("DEEPALIGN_NO_EXTENSION=1: the package without its extension")
        setup()
    else:
        # bdist_wheel's py_limited_api tags the wheel abi3 (cp310-abi3): one wheel for every
        # CPython >= 3.10.
        setup(ext_modules=[_extension()], cmdclass=_cmdclass(),
              options={"bdist_wheel": {"py_limited_api": f"cp{PYTHON_MIN[0]}{PYTHON_MIN[1]}"}})
