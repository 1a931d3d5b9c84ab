#!/usr/bin/env bash
# The user's install, checked: builds the wheel as `pip install .` does (pip's default build
# isolation, so the build environment gets pyproject.toml's [build-system] requires), installs
# it into a throwaway environment that already has .venv's torch, and runs the op tests against
# that install, not the editable one. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC=build/wheel-src DIST=build/dist ENV=build/wheel-env
rm -rf "$SRC" "$DIST" "$ENV"
# A copy of the tree as git sees it (tracked and new files, nothing ignored), so the isolated
# build's objects never mix with the in-place build's in build/.
mkdir -p "$SRC"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$SRC"
start=$SECONDS
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip wheel -q --no-deps -w "$DIST" "$SRC"
WHEEL=$(ls "$DIST"/deepalign-*.whl)
echo "wheel check: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB) built with isolation" \
  "in $((SECONDS - start)) s"
# The throwaway environment sees .venv's packages (torch 2.13 CPU, numpy, pytest ...) through a
# path entry, which does not run .venv's .pth files: the editable deepalign stays invisible.
.venv/bin/python -m venv "$ENV"
purelib() { "$1" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
purelib .venv/bin/python > "$(purelib "$ENV/bin/python")/venv-packages.pth"
"$ENV/bin/python" -m pip install -q "$WHEEL"  # resolves the dependencies: all present already
cd "$ENV"  # away from the source tree
bin/python - "$ROOT" <<'PY'
import sys
from pathlib import Path

import deepalign
from deepalign import ops

where = Path(deepalign.__file__).resolve()
if Path(sys.argv[1]).resolve() / "deepalign" in where.parents:
    sys.exit(f"wheel check: imported the source tree's deepalign ({where}), not the wheel")
if not ops.extension_loaded():
    sys.exit(f"wheel check: the wheel's extension did not load: {ops.extension_error()}")
print(f"wheel check: deepalign from {where.parent}, extension {ops.build_info()}")
PY
bin/python -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "$ROOT/tests/ops" "$@"
