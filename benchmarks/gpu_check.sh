#!/usr/bin/env bash
# One prepared GPU check for the device machine (one H200; Python 3.12 and its
# own torch there): build the extension, run the CUDA tests against the CPU
# kernels and references, benchmark the kernels, end-to-end FPS and a training
# step. Everything lands in $OUT (default benchmarks/results/gpu_check/):
#   summary.txt  the short table printed last
#   build.log  tests.log  bench.log        full logs
#   kernels_cuda.json  fem_cuda.json  fps_cuda.json  train_cuda.json
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
# On the device tool: run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

note "== gpu_check $(date -u +%FT%TZ) =="
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$summary"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0))" 2>&1 | tee -a "$summary"

start=$(date +%s)
if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  note "BUILD FAILED (see build.log)"; tail -40 "$OUT/build.log"; exit 1
fi
note "build: $(( $(date +%s) - start )) s"
$PY -c "import dsfd.ops, dsfd.extension as e; dsfd.ops.require_compiled(); assert e.has_cuda_kernels(), 'no CUDA kernels'" 2>&1 | tee -a "$summary"

# CUDA op tests (each compares the CUDA kernel with the CPU kernel / reference / torchvision)
timeout 240 $PY -m pytest tests/test_ops_boxes.py tests/test_ops_nms.py tests/test_ops_matching.py \
  tests/test_ops_fem.py tests/test_ops_box_voting.py tests/test_ops_compile.py -q -rs -p no:cacheprovider \
  > "$OUT/tests.log" 2>&1
note "op tests: $(tail -1 "$OUT/tests.log")"
grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head -20 | tee -a "$summary"
# the model / inference / training tests that have CUDA cases
timeout 120 $PY -m pytest tests -q -rs -p no:cacheprovider -k "cuda" --ignore=tests/test_ops_boxes.py \
  --ignore=tests/test_ops_nms.py --ignore=tests/test_ops_matching.py --ignore=tests/test_ops_fem.py \
  --ignore=tests/test_ops_box_voting.py --ignore=tests/test_ops_compile.py >> "$OUT/tests.log" 2>&1
note "other cuda tests: $(tail -1 "$OUT/tests.log")"

{
  timeout 150 $PY benchmarks/kernels.py --device cuda --out "$OUT/kernels_cuda.json"
  timeout 150 $PY benchmarks/fem.py --device cuda --compile --out "$OUT/fem_cuda.json"
  [ -f benchmarks/fps.py ] && timeout 150 $PY benchmarks/fps.py --device cuda --res vga --batch 1,16 --dtype float16 --out "$OUT/fps_cuda.json"
  [ -f benchmarks/train_profile.py ] && timeout 90 $PY benchmarks/train_profile.py --device cuda --out "$OUT/train_cuda.json"
} > "$OUT/bench.log" 2>&1
grep -E "^(box_iou|decode_boxes|nms|batched_nms|match_anchors|hard_negative|upsample_mul|FEM)" "$OUT/bench.log" >> "$summary" || true
grep -iE "fps|img/s|images/s" "$OUT/bench.log" | tail -12 >> "$summary"
note "total: $(( $(date +%s) - start )) s"
cat "$summary"
