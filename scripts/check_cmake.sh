#!/usr/bin/env bash
# Builds csrc/ with CMake (CPU) and checks the library loads and registers every op,
# so CMakeLists.txt cannot drift from setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
B=build/cmake
mkdir -p build
TORCH_PREFIX=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
cmake -S . -B "$B" -G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/.venv/bin/ninja" \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DPython3_EXECUTABLE="$PWD/$PY" -Wno-dev >"$B.log" 2>&1 \
  || { cat "$B.log"; exit 1; }
cmake --build "$B" -j "${MAX_JOBS:-2}" >>"$B.log" 2>&1 || { tail -50 "$B.log"; exit 1; }
LIB=$(ls "$B"/_C*.so)
"$PY" - "$LIB" <<'PY'
import sys, torch
torch.ops.load_library(sys.argv[1])
ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("deepalign::")]
kernels = [n for n in ops if torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")]
if not ops:
    sys.exit("cmake build: the library registered no deepalign ops")
missing = sorted(set(ops) - set(kernels))
print(f"cmake build: {sys.argv[1]} loads; {len(kernels)} ops with CPU kernels")
if missing:
    sys.exit(f"cmake build: ops without a CPU kernel: {missing}")
PY
