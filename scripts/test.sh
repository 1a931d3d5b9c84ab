#!/usr/bin/env bash
# The whole check, as CI runs it: set up .venv, build with CMake, compile-check CUDA, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/check_cmake.sh
bash scripts/check_cuda_compile.sh
.venv/bin/python -m pytest -q "$@"
