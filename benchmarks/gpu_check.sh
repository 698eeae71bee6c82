#!/usr/bin/env bash
# One prepared GPU check for the device machine (one H200; Python 3.12 and its
# own torch there): build the extension, run every CUDA test against the CPU
# kernels and references, run `dsfd detect` / `dsfd eval` / training / DDP on
# the GPU, benchmark kernels, end-to-end FPS and training, profile. Stages:
#
#   build    setup.py build_ext --inplace (sm_90)
#   tests    CUDA op tests, opcheck on CUDA, model / inference / training CUDA tests
#   cli      dsfd detect on the GPU vs the CPU, dsfd eval of the default model (WIDER val subset)
#   ddp      torchrun 2 ranks on the one GPU: a DDP training run (gloo: NCCL refuses two ranks
#            on one device) and a sharded dsfd detect
#   bench    kernels.py, fps.py (paper ResNet50 b1/b32, released ResNet152 b1, default b1/b64),
#            train_profile.py (paper ResNet50 640x640 bf16)
#   profile  gpu_profile.py (where a detect_batch call spends its time)
#
#   STAGES="build tests" OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Everything lands in $WORK (default benchmarks/results/gpu_check/); with the
# device tool's $OUT set, $OUT gets summary.txt and one gpu_check.tgz of all
# logs and JSON (the tool returns at most 8 files). WIDER data: carry a small
# copy (.gpu_data/widerface, made by benchmarks/gpu_data.py) or the data tests skip.
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_data"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
STAGES=${STAGES:-"build tests cli bench ddp profile"}
WORK=${WORK:-${OUT:+/tmp/gpu_check}}
WORK=${WORK:-benchmarks/results/gpu_check}
BUDGET=${BUDGET:-540}  # seconds for the whole script: stages are skipped when it runs out
mkdir -p "$WORK"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
# The device image sets CC/CXX to a bare /opt/gcc toolchain; an extension built with it segfaults on the
# first error an op raises (the C++ exception unwinder crashes; seen 2026-12-04). The system GCC 13.3 is
# the one torch was built with: use it.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
[ -d .gpu_data/widerface ] && export DSFD_WIDER_ROOT="$PWD/.gpu_data/widerface"
summary="$WORK/summary.txt"
: > "$summary"
T0=$(date +%s)
note() { echo "$*" | tee -a "$summary"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
want() { [[ " $STAGES " == *" $1 "* ]]; }
# run NAME SECONDS CMD...: a step with its own log and time limit (never longer than what is left)
run() {
  local name=$1 limit=$2; shift 2
  local l; l=$(left)
  if [ "$l" -lt 15 ]; then note "SKIP $name (budget spent)"; return 0; fi
  [ "$limit" -gt "$l" ] && limit=$l
  local s; s=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  note "$(printf '%-26s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - s ))" "$(tail -1 "$WORK/$name.log" | cut -c1-150)")"
  return $rc
}
finish() {
  note "total: $(( $(date +%s) - T0 )) s"
  cp dsfd/_C*.so "$WORK/" 2>/dev/null  # the extension built there (a rerun with unchanged csrc/ can carry it)
  if [ -n "${OUT:-}" ] && [ "$WORK" != "$OUT" ]; then
    cp "$summary" "$OUT/summary.txt"
    # logs and JSON only: the .so, checkpoints and drawn images would pass the 16 MiB a returned file may have
    tar czf "$OUT/gpu_check.tgz" --exclude='*.so' --exclude='*.pt' --exclude='*.jpg' --exclude='*.png' -C "$WORK" . 2>/dev/null
  fi
}
trap finish EXIT

note "== gpu_check $(date -u +%FT%TZ) stages: $STAGES =="
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$summary"
$PY -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'gpu', torch.cuda.get_device_name(0))" 2>&1 | tee -a "$summary"
note "compiler: ${CXX:-default} ($(${CXX:-c++} --version 2>&1 | head -1))"
note "WIDER root: ${DSFD_WIDER_ROOT:-none (data tests skip)}"

if want build; then
  run build 300 $PY setup.py build_ext --inplace || { note "BUILD FAILED"; grep -E "error|Error" "$WORK/build.log" | head -30 | tee -a "$summary"; exit 1; }
fi
$PY -c "import dsfd.ops, dsfd.extension as e; dsfd.ops.require_compiled(); assert e.has_cuda_kernels(), 'no CUDA kernels'; print('dsfd._C with CUDA kernels loaded')" 2>&1 | tee -a "$summary"

PYTEST=($PY -m pytest -q -rs -p no:cacheprovider)
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 120)
if want tests; then
  # every kernel against the CPU kernel / reference / torchvision, on the GPU (and the CPU cases beside)
  run test_ops 200 "${PYTEST[@]}" tests/test_ops_boxes.py tests/test_ops_nms.py tests/test_ops_matching.py \
    tests/test_ops_ignore.py tests/test_ops_fem.py tests/test_ops_box_voting.py tests/test_ops_compile.py \
    tests/test_ops_inference.py
  # the model / inference / training / loss tests with CUDA cases
  run test_cuda_other 200 "${PYTEST[@]}" tests -k "cuda or gpu" --ignore=tests/test_ops_boxes.py \
    --ignore=tests/test_ops_nms.py --ignore=tests/test_ops_matching.py --ignore=tests/test_ops_ignore.py \
    --ignore=tests/test_ops_fem.py \
    --ignore=tests/test_ops_box_voting.py --ignore=tests/test_ops_compile.py --ignore=tests/test_ops_inference.py
  grep -hE "^(FAILED|ERROR)" "$WORK"/test_*.log | head -30 | tee -a "$summary"
fi

if want cli; then
  run detect_cli 120 bash -c "$PY -m dsfd detect dsfd/assets/grace_hopper.jpg --device cuda --out $WORK/det_gpu --no-progress && \
    $PY -m dsfd detect dsfd/assets/grace_hopper.jpg --device cpu --dtype float32 --out $WORK/det_cpu --no-progress && \
    $PY benchmarks/compare_detections.py $WORK/det_cpu $WORK/det_gpu"
  if [ -n "${DSFD_WIDER_ROOT:-}" ]; then
    run eval_default_gpu 150 $PY -m dsfd eval --weights default --data "$DSFD_WIDER_ROOT" --out "$WORK/eval_default" --no-progress
    grep -iE "easy|medium|hard" "$WORK/eval_default_gpu.log" | tail -4 >> "$summary"
  fi
fi

if want bench; then
  FPS=($PY benchmarks/fps.py --device cuda --res vga --dtype bfloat16 --cuda-graphs --iters 30 --warmup 5)
  run fps_default 120 "${FPS[@]}" --weights default --batch 1,64 --out "$WORK/fps_cuda_vga_default.json"
  # bisect the 2026-12-04 defect (bf16 + CUDA graphs disagreed with eager fp32): graphs in fp32, bf16 without graphs
  run fps_graphs_fp32 90 $PY benchmarks/fps.py --device cuda --res vga --dtype float32 --cuda-graphs --iters 10 --warmup 3 \
    --weights default --batch 1 --out "$WORK/fps_cuda_graphs_fp32.json"
  run fps_bf16_eager 90 $PY benchmarks/fps.py --device cuda --res vga --dtype bfloat16 --iters 10 --warmup 3 \
    --weights default --batch 1 --out "$WORK/fps_cuda_bf16_eager.json"
  grep -h "agreement" "$WORK"/fps_graphs_fp32.log "$WORK"/fps_bf16_eager.log "$WORK"/fps_default.log | tee -a "$summary"
  run fps_resnet50 150 "${FPS[@]}" --network paper --backbone resnet50 --batch 1,32 --out "$WORK/fps_cuda_vga_paper_resnet50.json"
  run fps_resnet152 120 "${FPS[@]}" --network released --backbone resnet152 --batch 1 --out "$WORK/fps_cuda_vga_released_resnet152.json"
  grep -hE "^(dsfd|baseline)" "$WORK"/fps_*.log >> "$summary"
  run kernels 120 $PY benchmarks/kernels.py --device cuda --quick --out "$WORK/kernels_cuda.json"
  grep -E "^(box_iou|decode_boxes|nms|batched_nms|match_anchors|hard_negative|upsample_mul)" "$WORK/kernels.log" >> "$summary"
  run train_profile 150 $PY benchmarks/train_profile.py --device cuda --backbone resnet50 --size 640 --batch-size 32 \
    --amp bf16 --iters 15 --warmup 5 --out "$WORK/train_cuda_resnet50.json"
  grep -A12 "^phase" "$WORK/train_profile.log" >> "$summary"
fi

if want ddp; then
  run ddp_train 150 env DSFD_DIST_BACKEND=gloo $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m dsfd train \
    --data "${DSFD_WIDER_ROOT:-none}" --out "$WORK/ddp_run" --backbone lite --size 320 --batch-size 8 --iters 6 \
    --device cuda --dtype bfloat16 --workers 2 --val-every 0 --ckpt-every 0 --no-progress
  run ddp_detect 120 env DSFD_DIST_BACKEND=gloo $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m dsfd detect \
    "${DSFD_WIDER_ROOT:-dsfd/assets}/WIDER_val/images/0--Parade" --device cuda --out "$WORK/ddp_detect" --no-draw --no-progress
fi

if want profile; then
  run profile_default_b1 90 $PY benchmarks/gpu_profile.py --weights default --batch 1 --cuda-graphs --out "$WORK/profile_default_b1.json"
  run profile_default_b64 90 $PY benchmarks/gpu_profile.py --weights default --batch 64 --cuda-graphs --out "$WORK/profile_default_b64.json"
  run profile_resnet50_b32 90 $PY benchmarks/gpu_profile.py --backbone resnet50 --batch 32 --cuda-graphs --out "$WORK/profile_resnet50_b32.json"
fi
