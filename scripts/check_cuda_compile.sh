#!/usr/bin/env bash
# Compile-checks every csrc/cuda/*.cu for sm_90 on machines that have nvcc but no GPU. On the
# stable ABI the CUDA sources need only torch's stable headers (torch/csrc/stable,
# torch/headeronly, the C shim), which every torch wheel ships, the CPU one in .venv included:
# no CUDA build of torch is downloaded. The flags are setup.py's for a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
  echo "cuda compile check: no nvcc on PATH, skipped"
  exit 0
fi
shopt -s nullglob
SOURCES=(csrc/cuda/*.cu)
if [ ${#SOURCES[@]} -eq 0 ]; then
  echo "cuda compile check: no .cu files"
  exit 0
fi
# TORCH_INCLUDE: another torch's headers (scripts/check_torch_headers.sh)
I=${TORCH_INCLUDE:-$(.venv/bin/python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")}
TARGET=$(.venv/bin/python -c "import setup; print(setup._target_version_flag())")
mkdir -p build/cuda-check
compile() {
  local src=$1 obj=build/cuda-check/$(basename "$1" .cu).o
  nvcc -c -O3 -std=c++20 -arch=sm_90 -Xcompiler -fPIC --expt-relaxed-constexpr -DUSE_CUDA \
    "$TARGET" -Icsrc -I"$I" "$src" -o "$obj" 2>"$obj.log" \
    && echo "cuda compile check: $src OK" \
    || { echo "cuda compile check: $src FAILED"; cat "$obj.log"; return 1; }
}
export -f compile
export I TARGET
printf '%s\n' "${SOURCES[@]}" | xargs -P "${MAX_JOBS:-2}" -I{} bash -c 'compile {}'
