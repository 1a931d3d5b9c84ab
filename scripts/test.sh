#!/usr/bin/env bash
# The whole check, as CI runs it: set up .venv, build with CMake, compile-check CUDA, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { echo "== $1 done after ${SECONDS}s"; }
bash scripts/bootstrap.sh
stage "set-up (.venv, extension, data)"
bash scripts/check_cmake.sh
stage "CMake build"
bash scripts/check_cuda_compile.sh
stage "CUDA compile check"
.venv/bin/python -m pytest -q "$@"
