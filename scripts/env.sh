#!/usr/bin/env bash
# Creates (or reuses) .venv, installs torch and the dependencies, and builds
# the dsfd extension in place (editable install). Idempotent: a second run only
# rebuilds what changed.
#
#   bash scripts/env.sh
#
# Environment: PYTHON (default python3), DSFD_VENV (default .venv),
# FORCE_CUDA (1: build the CUDA kernels or fail; 0: CPU only; default: 1 when
# an nvcc matching torch's CUDA exists), TORCH_CUDA_ARCH_LIST (default 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${DSFD_VENV:-.venv}
TORCH_SPEC=${DSFD_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

echo "[env] installing torch and dependencies"
# shellcheck disable=SC2086
"$PY" -m pip install -q --disable-pip-version-check $TORCH_SPEC \
  "setuptools>=64" wheel ninja numpy opencv-python-headless tqdm matplotlib scipy pytest \
  onnx onnxruntime

# Build the CUDA kernels whenever a toolkit is on disk, so that a CUDA compile
# error fails here (and in CI) even without a GPU.
if [ -z "${FORCE_CUDA:-}" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] \
   && "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
  export FORCE_CUDA=1
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "[env] building dsfd (FORCE_CUDA=${FORCE_CUDA:-auto}, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . -v 2>&1 \
  | grep -E "^\[dsfd setup\]|error|Error" || true
"$PY" -c "import dsfd.extension as e; e._assert_has_ops(); print('[env] dsfd._C loaded; CUDA kernels built:', e.has_cuda_kernels())"
if [ "${FORCE_CUDA:-}" = "1" ]; then
  "$PY" -c "import dsfd.extension as e, sys; sys.exit(0 if e.has_cuda_kernels() else 'FORCE_CUDA=1 but the CUDA kernels are missing')"
fi
echo "[env] build took $(( $(date +%s) - start )) s"
