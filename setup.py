"""Build of the compiled extension ``deepalign._C``.

CPU kernels are always built. CUDA kernels are added when torch has CUDA and a GPU is
visible, or when ``FORCE_CUDA=1``; ``FORCE_CPU=1`` skips them. Always install with
``pip install --no-build-isolation -e .`` so the extension is built against the torch
that will run it.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

try:
    import torch
except ImportError:
    sys.exit(
        "deepalign: building the extension needs torch in the build environment.\n"
        "Install torch first, then build without isolation:\n"
        "    pip install torch==2.13.0 && pip install --no-build-isolation -e .\n"
        "(or run `bash scripts/bootstrap.sh`, which does both in .venv)."
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


def _extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3"]
    link = []
    if "OpenMP" in torch.__config__.parallel_info():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kwargs = dict(include_dirs=[os.path.abspath("csrc")], extra_link_args=link)
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
                         extra_compile_args={"cxx": cxx, "nvcc": ["-O3",
                                                                   "-lineinfo"]},
                         **kwargs)


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    setup(ext_modules=[_extension()], cmdclass=_cmdclass())
