"""The compiled extension is built, loaded and complete; the build switches behave."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepalign
from deepalign import ops

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_extension_is_loaded():
    # Never silently replaced by a fallback: a missing or broken _C fails the suite.
    assert ops.extension_loaded(), f"deepalign._C failed to load: {ops.extension_error()}"
    assert "CPU" in ops.compiled_backends()


def registered_ops() -> list:
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("deepalign::"))


def test_every_op_has_a_cpu_kernel():
    names = registered_ops()
    assert "deepalign::sinkhorn_project" in names and "deepalign::linear_assignment" in names
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name


def test_cuda_kernels_reported_consistently():
    assert ops.has_cuda_kernels() == ("CUDA" in ops.compiled_backends())
    if torch.version.cuda is None:
        assert not ops.has_cuda_kernels()


def test_cli_version_and_info():
    out = subprocess.run([BIN / "deepalign", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and deepalign.__version__ in out.stdout
    out = subprocess.run([BIN / "deepalign", "info"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "extension deepalign._C: loaded" in out.stdout
    assert f"torch {torch.__version__}" in out.stdout
    assert "CPU kernels: yes" in out.stdout


def test_force_cuda_with_cpu_torch_is_an_error():
    if torch.version.cuda is not None:
        pytest.skip("torch has CUDA")
    env = dict(os.environ, FORCE_CUDA="1")
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "FORCE_CUDA=1" in out.stdout + out.stderr


def test_cuda_home_is_derived_through_wrapper_scripts(tmp_path, monkeypatch):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on PATH")
    # A wrapper script in an unrelated folder, as on the project's machines.
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{nvcc}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    home = Path(_setup_module()._cuda_home_from_nvcc())
    assert home != tmp_path
    assert (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime.h").is_file()


def _setup_module():
    sys.path.insert(0, str(ROOT))
    try:
        import setup as setup_module
    finally:
        sys.path.pop(0)
    return setup_module


def test_extension_is_on_the_stable_abi_of_the_declared_minimum():
    # One binary for every torch from TORCH_MIN on: the runtime dependency, the isolated build's
    # torch and CMake's build all say the same version.
    setup_module = _setup_module()
    major, minor = setup_module.TORCH_MIN
    info = ops.build_info()
    assert info["abi"] == "stable" and info["torch_min"] == f"{major}.{minor}"
    assert info["built_with_torch"] != "unknown"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch>={major}.{minor}"' in pyproject
    assert '"torch==' in pyproject.split("[project]")[0]  # [build-system] requires a torch
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert f"set(DEEPALIGN_TORCH_MIN {major}.{minor})" in cmake
    assert setup_module._target_version_flag().split("=")[1] in cmake
    assert Path(ops._extension._C.__file__).name.endswith(".abi3.so")


def test_cli_info_names_both_torches_and_the_abi():
    out = subprocess.run([BIN / "deepalign", "info"], capture_output=True, text=True)
    assert "LibTorch stable ABI" in out.stdout
    assert f"built against torch {ops.build_info()['built_with_torch']}" in out.stdout
    assert f"running under torch {torch.__version__}" in out.stdout


def test_too_old_torch_is_a_clear_error_naming_the_minimum():
    code = ("import torch; torch.__version__ = '2.9.1'; import runpy; "
            "runpy.run_path('setup.py', run_name='not_main')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "needs torch >= 2.10" in out.stdout + out.stderr
