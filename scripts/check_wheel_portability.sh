#!/usr/bin/env bash
# One binary for every torch: installs the wheel built under torch 2.13.0 (CPU; by
# scripts/check_wheel.sh, built here if missing) next to torch 2.14.1 (the CUDA build, which runs
# on a CPU-only machine) in a fresh environment, checks that the installed extension is the
# wheel's file byte for byte (nothing was recompiled), and runs the CPU op tests there.
# Not in CI: it installs a second, multi-GB torch. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ENV=build/portability-env
TORCH=${PORTABILITY_TORCH:-torch==2.14.1}
ls build/dist/deepalign-*.whl >/dev/null 2>&1 || bash scripts/check_wheel.sh --co -q >/dev/null
WHEEL=$(ls "$ROOT"/build/dist/deepalign-*.whl)
rm -rf "$ENV"
"${PYTHON:-python3}" -m venv "$ENV"
start=$SECONDS
"$ENV/bin/python" -m pip install -q "$TORCH" "pytest>=7" "hypothesis>=6"
echo "portability: $TORCH installed in $((SECONDS - start)) s"
"$ENV/bin/python" -m pip install -q "$WHEEL"
cd "$ENV"  # away from the source tree
bin/python - "$WHEEL" <<'PY'
import hashlib, sys, zipfile
from pathlib import Path

import torch
import deepalign
from deepalign import ops

with zipfile.ZipFile(sys.argv[1]) as wheel:
    [name] = [n for n in wheel.namelist() if n.startswith("deepalign/_C")]
    packed = hashlib.sha256(wheel.read(name)).hexdigest()
installed = Path(deepalign.__file__).parent / Path(name).name
if hashlib.sha256(installed.read_bytes()).hexdigest() != packed:
    sys.exit(f"portability: {installed} is not the wheel's {name}")
if not ops.extension_loaded():
    sys.exit(f"portability: the extension did not load under torch {torch.__version__}: "
             f"{ops.extension_error()}")
info = ops.build_info()
print(f"portability: {Path(sys.argv[1]).name} (built against torch {info['built_with_torch']}) "
      f"loads under torch {torch.__version__} (CUDA {torch.version.cuda}) unchanged")
PY
bin/deepalign info
bin/python -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "$ROOT/tests/ops" "$@"
