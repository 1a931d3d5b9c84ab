#!/usr/bin/env bash
# The whole check, as CI runs it: set up .venv, build with CMake, compile-check CUDA, build the
# wheel as `pip install .` does and run the op tests against it, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { echo "== $1 done after ${SECONDS}s"; }
bash scripts/bootstrap.sh
stage "set-up (.venv, extension, data)"
bash scripts/check_cmake.sh
stage "CMake build"
bash scripts/check_cuda_compile.sh
stage "CUDA compile check"
bash scripts/check_wheel.sh
stage "isolated wheel build, op tests against the installed wheel"
# The op tests just ran against the installed wheel; without arguments the rest runs here.
[ $# -gt 0 ] || set -- --ignore=tests/ops
.venv/bin/python -m pytest -q "$@"
