#!/usr/bin/env bash
# Compile-checks every C++ and CUDA source against the headers of another torch release (default:
# setup.py's TORCH_MIN, the oldest torch the package declares). The stable ABI lets one binary
# load under any torch >= TORCH_MIN, but a build compiles against the torch it finds, so a macro
# that only newer headers define goes unnoticed until someone builds against an older torch
# (STABLE_TORCH_ERROR_CODE_CHECK, torch >= 2.12 only: found on a GPU machine with torch 2.11).
# Downloads that torch's wheel once into build/torch-VERSION (about 0.9 GB: PyPI's Linux wheels
# are CUDA builds), so it is a release check, not part of CI.
#   bash scripts/check_torch_headers.sh [VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
VERSION=${1:-$($PY -c "import setup; print('%d.%d.0' % setup.TORCH_MIN)")}
DIR=build/torch-$VERSION
if [ ! -d "$DIR/torch/include" ]; then
  $PY -m pip download -q --no-deps "torch==$VERSION" -d "$DIR"
  unzip -q -o "$DIR"/torch-*.whl 'torch/include/*' -d "$DIR"
  rm "$DIR"/torch-*.whl
fi
I=$DIR/torch/include
PYINC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
mapfile -t MACROS < <($PY -c "import setup; print('\n'.join(setup._abi_macros()))")
for src in csrc/*.cpp csrc/cpu/*.cpp; do
  g++ -fsyntax-only -std=c++17 -fopenmp -Icsrc -I"$I" -I"$PYINC" "${MACROS[@]}" \
    -DPy_LIMITED_API=0x030A0000 -DTORCH_EXTENSION_NAME=_C "$src" \
    || { echo "torch $VERSION headers: $src FAILED"; exit 1; }
done
echo "torch $VERSION headers: every C++ source compiles"
TORCH_INCLUDE=$I bash scripts/check_cuda_compile.sh
