#!/usr/bin/env bash
# Train the default model on the lent GPU machine: the prepared script of issue #30 (item 3).
#
# The data travels in parts (scripts/gpu_stage_data.py: .gpu_train/p1 ... p5, about 52 MiB each, under
# the tool's 64 MiB per call), one part per call, back to back (the machine stays warm 30 s after a call):
#
#   python scripts/gpu_stage_data.py                                  # here, once
#   run(command="bash scripts/gpu_train_default.sh stage", carry=[".gpu_train/p1"], timeout_s=60)
#   run(command="bash scripts/gpu_train_default.sh stage", carry=[".gpu_train/p2"], timeout_s=60)   # ... p4
#   run(command="bash scripts/gpu_train_default.sh train", carry=[".gpu_train/p5"], timeout_s=600)
#
# stage: the first call starts building the extension in the background (setsid: it outlives the call);
#        every call lists the parts that have arrived.
# train: waits for the build, measures the speed in a short probe run, sets the iterations so that the
#        run ends inside TRAIN_SECONDS, then trains from the shipped default (the recipe of the CPU runs:
#        crowds, ignore regions, zoom-out crops to 1.6, the FEM norms re-opened; batch BATCH, lr LR, bf16,
#        a weight average) writing last.pt about every minute into $OUT/run, so that whatever the
#        call's end, the last minute's weights come back; then scores last.pt on the val subset that
#        travelled in the last part (eval.log). Evaluate them here too:
#          dsfd eval --weights /work/.device/.../run/last.pt --out runs/gpu_eval   (reads the average)
#
# Locally (CPU, a tiny budget, to test the script): DEVICE=cpu TRAIN_SECONDS=40 BATCH=4 WORKERS=1 \
#   OUT=/tmp/gpu_out bash scripts/gpu_train_default.sh train
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-train}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STAGE=${STAGE:-.gpu_train}
OUT=${OUT:-/tmp/gpu_train_out}
TRAIN_SECONDS=${TRAIN_SECONDS:-420}   # the training run itself; the probe, start-up and copies come on top
BATCH=${BATCH:-32}
LR=${LR:-0.004}                       # the CPU runs' 1e-3 at batch 8, scaled with the batch
WORKERS=${WORKERS:-14}
INIT=${INIT:-default}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
# the image's /opt/gcc toolchain builds an extension that crashes on the first C++ exception (BUILD_NOTES)
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi

parts() { ls -d "$STAGE"/p[0-9]* 2>/dev/null; }
echo "parts here: $(parts | tr '\n' ' ')"
du -sh "$STAGE" 2>/dev/null

if [ "$MODE" = stage ]; then
  if [ "$DEVICE" = cuda ] && [ ! -e "$STAGE/build.started" ]; then
    mkdir -p "$STAGE"; date +%s > "$STAGE/build.started"
    setsid nohup bash -c "$PY setup.py build_ext --inplace > $STAGE/build.log 2>&1; echo \$? > $STAGE/build.rc" \
      > /dev/null 2>&1 < /dev/null &
    echo "extension build started in the background"
  fi
  [ -e "$STAGE/build.rc" ] && echo "build finished, rc=$(cat "$STAGE/build.rc")"
  exit 0
fi

[ "$MODE" = train ] || { echo "usage: $0 stage|train"; exit 2; }
T0=$(date +%s)
if [ "$DEVICE" = cuda ]; then
  if [ ! -e "$STAGE/build.started" ]; then
    mkdir -p "$STAGE"; date +%s > "$STAGE/build.started"
    $PY setup.py build_ext --inplace > "$STAGE/build.log" 2>&1; echo $? > "$STAGE/build.rc"
  fi
  while [ ! -e "$STAGE/build.rc" ]; do sleep 2; done
  cp "$STAGE/build.log" "$OUT/build.log"
  [ "$(cat "$STAGE/build.rc")" = 0 ] || { echo "BUILD FAILED"; tail -30 "$STAGE/build.log"; exit 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "waited $(( $(date +%s) - T0 )) s for the build"

DATA=()
EVAL_ROOT=""
for p in $(parts); do
  for r in "$p"/*/; do
    r=${r%/}
    case "$(basename "$r")" in eval_*) EVAL_ROOT=$r ;; *) DATA+=(--data "$r") ;; esac
  done
done
[ ${#DATA[@]} -gt 0 ] || { echo "no staged data under $STAGE"; exit 2; }
echo "data: ${DATA[*]}"
COMMON=(-m dsfd train "${DATA[@]}" --weights "$INIT" --fem-norm --crop-scale 0.3 1.6 --batch-size "$BATCH"
        --lr "$LR" --clip-grad 10 --workers "$WORKERS" --device "$DEVICE" --dtype bfloat16 --val-every 0
        --keep-every 0 --no-progress)

# probe: the speed of this machine for this run (images/s of the last logged window)
rm -rf "$STAGE/probe"
PROBE_ITERS=${PROBE_ITERS:-60}
$PY "${COMMON[@]}" --iters 100000 --stop-at "$PROBE_ITERS" --warmup-iters 10 --log-every 20 --ckpt-every 0 \
  --out "$STAGE/probe" > "$OUT/probe.log" 2>&1 || { echo "PROBE FAILED"; tail -30 "$OUT/probe.log"; exit 1; }
RATE=$($PY -c "import json; r=[json.loads(l) for l in open('$STAGE/probe/log.jsonl')]; print([x for x in r if x['type']=='train'][-1]['images_per_s'])")
ITERS=$($PY -c "print(max(20, int($RATE * $TRAIN_SECONDS / $BATCH)))")
CKPT=$($PY -c "print(max(10, int($RATE * 60 / $BATCH)))")
EMA=$($PY -c "print(round(1 - 8.0 / $ITERS, 5))")        # averages over about the last eighth of the run
WARMUP=$($PY -c "print(max(10, $ITERS // 30))")
echo "probe: $RATE images/s -> $ITERS iterations of $BATCH (ckpt every $CKPT, warm-up $WARMUP, ema $EMA)"

$PY "${COMMON[@]}" --iters "$ITERS" --warmup-iters "$WARMUP" --ckpt-every "$CKPT" --ema "$EMA" \
  --log-every $(( CKPT / 4 > 0 ? CKPT / 4 : 1 )) --out "$OUT/run" > "$OUT/train.log" 2>&1
rc=$?
tail -5 "$OUT/train.log"
echo "train rc=$rc; $(( $(date +%s) - T0 )) s; files:"
ls -la "$OUT/run"
# score the run where it trained (the val subset travels in the last part): the weight average of last.pt
if [ -n "$EVAL_ROOT" ] && [ -f "$OUT/run/last.pt" ]; then
  timeout ${EVAL_SECONDS:-90} $PY -m dsfd eval --weights "$OUT/run/last.pt" --data "$EVAL_ROOT" --device "$DEVICE" \
    --out "$STAGE/eval" --no-progress --no-plots > "$OUT/eval.log" 2>&1
  grep -E "^(easy|medium|hard)" "$OUT/eval.log"
fi
echo "total $(( $(date +%s) - T0 )) s"
exit $rc
