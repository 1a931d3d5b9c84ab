#!/usr/bin/env bash
# Compile-checks every csrc/cuda/*.cu for sm_90 against the headers of a CUDA build of torch,
# on machines that have nvcc but no GPU. The headers are cached in build/cuda-headers.
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
H=build/cuda-headers
if [ ! -f "$H/.complete" ]; then
  rm -rf "$H"; mkdir -p "$H/whl"
  .venv/bin/python -m pip download -q --no-deps -d "$H/whl" torch==2.14.1 \
    nvidia-cusparse==12.6.3.3 nvidia-cublas==13.1.1.3 nvidia-cusolver==12.0.4.66
  for w in "$H"/whl/*.whl; do
    unzip -q -o "$w" 'torch/include/*' 'nvidia/*/include/*' -d "$H/x" 2>/dev/null || true
  done
  rm -rf "$H/whl"
  touch "$H/.complete"
fi
I=$H/x/torch/include
mkdir -p build/cuda-check
compile() {
  local src=$1 obj=build/cuda-check/$(basename "$1" .cu).o
  nvcc -c -O3 -std=c++20 -arch=sm_90 -Xcompiler -fPIC --expt-relaxed-constexpr \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    -DTORCH_EXTENSION_NAME=_C -Icsrc -I"$I" -I"$I/torch/csrc/api/include" \
    -I"$H/x/nvidia/cu13/include" "$src" -o "$obj" 2>"$obj.log" \
    && echo "cuda compile check: $src OK" \
    || { echo "cuda compile check: $src FAILED"; cat "$obj.log"; return 1; }
}
export -f compile
export H I
printf '%s\n' "${SOURCES[@]}" | xargs -P "${MAX_JOBS:-2}" -I{} bash -c 'compile {}'
