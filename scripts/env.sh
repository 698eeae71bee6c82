#!/usr/bin/env bash
# Creates (or reuses) .venv, installs torch and the dependencies, and builds
# the dsfd extension in place (editable install).
#
#   bash scripts/env.sh
#
# Idempotent and quick when nothing changed: the dependencies are installed
# again only when their list changes, and the extension is rebuilt only when
# a file under csrc/, setup.py, pyproject.toml, the torch build or the build
# settings below changed (a hash of them is kept in $VENV/.dsfd-build-key) or
# dsfd._C does not load. A rebuild of an existing install compiles in the
# persistent build/ folder, so ninja recompiles only the changed sources.
#
# Environment: PYTHON (default python3), DSFD_VENV (default .venv),
# FORCE_CUDA (1: build the CUDA kernels or fail; 0: CPU only; default: 1 when
# an nvcc matching torch's CUDA exists), TORCH_CUDA_ARCH_LIST (default 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${DSFD_VENV:-.venv}
TORCH_SPEC=${DSFD_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
DEPS="$TORCH_SPEC setuptools>=64 wheel ninja numpy opencv-python-headless tqdm matplotlib scipy pytest onnx onnxruntime pycocotools av"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if [ "$(cat "$VENV/.dsfd-deps" 2>/dev/null)" != "$DEPS" ]; then
  echo "[env] installing torch and dependencies"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --disable-pip-version-check $DEPS
  echo "$DEPS" > "$VENV/.dsfd-deps"
else
  echo "[env] dependencies already installed ($VENV/.dsfd-deps)"
fi

# One Python start (torch imports slowly) for: FORCE_CUDA's default (build the CUDA kernels
# whenever a toolkit is on disk, so that a CUDA compile error fails here and in CI even
# without a GPU), the hash of what dsfd._C depends on (sources, build scripts, torch
# build, settings) and whether this checkout's dsfd._C loads (with CUDA kernels if forced).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
read -r force key loaded < <("$PY" - <<'PYEOF'
import hashlib, os, sys

import torch

force = os.environ.get("FORCE_CUDA", "")
nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
if not force and torch.version.cuda and os.access(nvcc, os.X_OK):
    force = "1"
h = hashlib.sha256()
files = ["setup.py", "pyproject.toml"] + sorted(os.path.join(d, f) for d, _, fs in os.walk("csrc") for f in fs)
for path in files:
    h.update(path.encode() + b"\0")
    with open(path, "rb") as f:
        h.update(f.read() + b"\0")
for part in (sys.version, torch.__version__, str(torch.version.cuda), force, os.environ["TORCH_CUDA_ARCH_LIST"]):
    h.update(part.encode() + b"\0")
try:
    import dsfd, dsfd.extension as e, dsfd.ops

    loaded = (os.path.realpath(os.path.dirname(dsfd.__file__)) == os.path.realpath("dsfd")
              and dsfd.ops.compiled_available() and (force != "1" or e.has_cuda_kernels()))
except Exception:  # noqa: BLE001 - not installed yet, or a broken build: rebuild
    loaded = False
print(force or "-", h.hexdigest(), int(loaded))
PYEOF
)
if [ -n "$force" ] && [ "$force" != "-" ]; then export FORCE_CUDA=$force; fi

start=$(date +%s)
# (the dsfd command is there once pip has installed this checkout into the venv)
if [ "$(cat "$VENV/.dsfd-build-key" 2>/dev/null)" = "$key" ] && [ "$loaded" = 1 ] && [ -x "$VENV/bin/dsfd" ]; then
  echo "[env] dsfd._C is up to date (sources, torch and build settings unchanged): build skipped"
else
  echo "[env] building dsfd (FORCE_CUDA=${FORCE_CUDA:-auto}, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  rm -f "$VENV/.dsfd-build-key"
  if [ -x "$VENV/bin/dsfd" ]; then
    # already installed (editable): rebuild in place, incrementally in the persistent build/ folder
    "$PY" setup.py -q build_ext --inplace 2>&1 | grep -E "^\[dsfd setup\]|error|Error" || true
  else
    "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . -v 2>&1 \
      | grep -E "^\[dsfd setup\]|error|Error" || true
  fi
  "$PY" -c "import dsfd.ops, dsfd.extension as e; dsfd.ops.require_compiled(); print('[env] dsfd._C loaded; CUDA kernels built:', e.has_cuda_kernels())"
  if [ "${FORCE_CUDA:-}" = "1" ]; then
    "$PY" -c "import dsfd.extension as e, sys; sys.exit(0 if e.has_cuda_kernels() else 'FORCE_CUDA=1 but the CUDA kernels are missing')"
  fi
  echo "$key" > "$VENV/.dsfd-build-key"
fi
echo "[env] done in $(( $(date +%s) - start )) s"
