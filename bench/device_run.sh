#!/usr/bin/env bash
# One call on the lent GPU machine: install fastai's wheels, then bench_train (bf16, channels-last,
# cache, 8 workers, bs 256, 224 px), a complete default `pneumo-fastai train` (timed), bench_data,
# and, while time is left, bench_train at bs 32, with cudnn autotuning, and a workers sweep.
# Every figure and log lands under $OUT, 7 files (at most 8 come back):
#   summary.txt (machine, versions, each step's time and exit code, the run's card in short),
#   bench_train.txt, bench_data.txt, train.log, exports/pneumo_resnet34.{json,history.csv,valid.csv}
# (the .pkl and .pth, ~85 MB each, are over the 16 MiB a file that comes back: moved to /tmp).
#
# Prepare here, from the repo root (the checkout travels, ../shared does not):
#   bash ../shared/tools/device-wheels.sh pydicom==3.0.2      # .whl/: fastai's stack + pydicom
#   mkdir -p .data && cp -r ../shared/data/chest_xray .data/   # .data/ is git-ignored
# (.whl is 5.3 MB and the images about 52 MB: under the 64 MiB that travels). Then call `run` with
#   command:   bash bench/device_run.sh
#   carry:     [".whl", ".data"]
#   timeout_s: 540
# The script stops itself within 510 s (DEVICE_RUN_BUDGET_S); each step has its own time limit,
# cut to what is left, so a hang in one still leaves the others' figures; expect 5-7 minutes on
# one H100 after the machine's start. The machine has no internet: the train step uses the torch
# hub cache's ImageNet file when that machine has one, else a random ResNet34 stand-in (same
# speed; validation figures then are not ImageNet's). Afterwards `rm -rf .data` here.
#
# Dry run of the CPU path here (tiny sizes, a few minutes on 2 cores; PYTHON defaults to python3;
# it skips the wheel install, which wants Python 3.12, and uses PYTHON's packages):
#   DEVICE_RUN_SMOKE=1 OUT=/tmp/device-out PNEUMO_DATA=../shared/data/chest_xray \
#     PYTHON=.venv/bin/python bash bench/device_run.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
: "${OUT:?set OUT to the folder that receives the figures}"
DATA=${PNEUMO_DATA:-.data/chest_xray}
PY=${PYTHON:-python3}
SMOKE=${DEVICE_RUN_SMOKE:-0}
mkdir -p "$OUT/exports"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then  # the same steps at sizes a 2-core CPU runs in a few minutes
  TRAIN_ARGS=(--device cpu --size 64 --bs 8 --num-workers 0 --images 200 --warmup 1 --batches 1
              --repeats 1)
  SWEEP_ARGS=(--sweep --sweep-size 64 --sweep-workers 0 1)
  DATA_ARGS=(--device cpu --images 40 --bs 8 --decode-images 10 --repeats 1 --num-workers 0)
  BS32_ARGS=(--bs 8 --warmup 1 --batches 2)
  RUN_ARGS=(--device cpu --size 64 --limit 30 --epochs 2 --patience 1 --num-workers 0)
  FALLBACK_ARGS=(--device cpu --limit 30 --epochs 2 --patience 1 --num-workers 0)
  BUDGET_S=${DEVICE_RUN_BUDGET_S:-1500}
  SLOW=4  # step time limits x4 on 2 shared cores
else
  TRAIN_ARGS=(--device cuda --size 224 --bs 256 --num-workers 8 --cache on --precision bf16
              --channels-last --warmup 8 --batches 30 --repeats 3)
  SWEEP_ARGS=(--sweep --sweep-size 224 --sweep-workers 4 8 15)
  DATA_ARGS=(--device cuda --images 1000 --repeats 3 --num-workers 8)
  BS32_ARGS=(--bs 32 --warmup 10 --batches 80)  # 3,650 train images: 114 batches an epoch
  RUN_ARGS=()
  FALLBACK_ARGS=(--full --device cuda)
  BUDGET_S=${DEVICE_RUN_BUDGET_S:-510}
  SLOW=1
fi
T0=$(date +%s)

# 1. Python packages: the carried wheels (cp312; a dry run uses $PYTHON's own), then the checkout
if [ "$SMOKE" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .site .whl/*.whl || { say "wheel install failed"; exit 1; }
  export PYTHONPATH=$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '? (no .git here)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$SUMMARY"
"$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import sys, torch, torchvision, fastai, PIL, pydicom
import pneumo_fastai.cli, pneumo_fastai.datatools.prepare, pneumo_fastai.training.train  # what the steps import
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, fastai {fastai.__version__}, pillow {PIL.__version__}, "
      f"pydicom {pydicom.__version__}, CUDA {torch.cuda.is_available()}")
EOF
if [ "${PIPESTATUS[0]}" != 0 ]; then say "imports failed: nothing else runs"; exit 1; fi
if [ "$SMOKE" != 1 ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"
then say "no CUDA device: nothing else runs"; exit 1; fi
if [ ! -d "$DATA/train" ]; then say "no $DATA/train: carry .data (see the header)"; exit 1; fi

step() {  # step NAME LIMIT_S LOGFILE COMMAND...: run within the budget, time, record exit code
  local name=$1 limit=$2 logfile=$3 left start end ms rc
  shift 3
  limit=$((limit * SLOW))
  left=$((BUDGET_S - ($(date +%s) - T0) - 10))
  if [ "$left" -lt 30 ]; then say "$(printf '%-18s skipped: budget spent' "$name")"; return 1; fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name: $*" >>"$logfile"
  start=$(date +%s%N)
  timeout "$limit" "$@" >>"$logfile" 2>&1
  rc=$?
  end=$(date +%s%N)
  ms=$(((end - start) / 1000000))
  say "$(printf '%-18s exit %3d  %4d.%d s  (limit %d s)' "$name" "$rc" $((ms / 1000)) \
    $((ms % 1000 / 100)) "$limit")"
  return $rc
}

# 2. throughput at 224 px: ours vs plain (target: >= 5,000 img/s)
step bench_train 150 "$OUT/bench_train.txt" "$PY" bench/bench_train.py --data "$DATA" \
  "${TRAIN_ARGS[@]}"

# 3. a complete default run through the CLI (early stopping, patience 12), timed (target: < 90 s)
WEIGHTS=${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints/resnet34-b627a593.pth
if [ -f "$WEIGHTS" ]; then
  say "weights: ImageNet file from the torch hub cache"
else
  WEIGHTS=/tmp/resnet34-random.pth
  "$PY" -c "import sys, torch, torchvision; torch.manual_seed(0); \
torch.save(torchvision.models.resnet34().state_dict(), sys.argv[1])" "$WEIGHTS"
  say "weights: random ResNet34 stand-in (no ImageNet file on this machine)"
fi
if ! step train 240 "$OUT/train.log" "$PY" -m pneumo_fastai.cli train --data "$DATA" \
  --exports "$OUT/exports" --weights "$WEIGHTS" --no-progress ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} &&
  ! grep -q "^Training on" "$OUT/train.log"; then
  # the CLI failed before training (that machine's typer, say): the same run through train()
  step train_py 240 "$OUT/train.log" "$PY" bench/bench_run.py --data "$DATA" \
    --weights "$WEIGHTS" --exports "$OUT/exports" "${FALLBACK_ARGS[@]}"
fi
for big in "$OUT"/exports/*.pkl "$OUT"/exports/*.pth; do
  if [ -f "$big" ]; then
    say "$(du -h "$big" | cut -f1) $(basename "$big") (moved to /tmp: too big to come back)"
    mv "$big" /tmp/
  fi
done
if compgen -G "$OUT/exports/*.json" >/dev/null; then
  "$PY" - "$OUT"/exports/*.json <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
for path in sys.argv[1:]:
    card = json.load(open(path))
    t, v = card["training"], card["validation"]["at_threshold"]
    print(f"{path.split('/')[-1]}: {t['epochs_run']} epochs (best {t['best_epoch']}, stopped "
          f"early {t['stopped_early']}), fit {t['seconds']} s ({t['seconds_per_epoch']} s/epoch) "
          f"on {t['device']}, {t['precision']}, channels-last {t['channels_last']}, "
          f"{t['num_workers']} workers, cache {t['cached_in_ram']}; valid at threshold "
          f"{card['decision_threshold']['value']:.3f}: accuracy {v['accuracy']:.3f}, "
          f"sensitivity {v['sensitivity']:.3f}, specificity {v['specificity']:.3f}, "
          f"ROC AUC {v['roc_auc']}")
EOF
fi

# 4. data loading: full-size JPEGs vs a prepared folder vs the RAM cache
step bench_data 120 "$OUT/bench_data.txt" "$PY" bench/bench_data.py --data "$DATA" \
  "${DATA_ARGS[@]}"

# 5. while time is left: bs 32 (the default run's batches, where per-batch overheads weigh
# most), cudnn autotuning (train() turns it off), workers sweep
step bench_train_bs32 60 "$OUT/bench_train.txt" "$PY" bench/bench_train.py --data "$DATA" \
  "${TRAIN_ARGS[@]}" "${BS32_ARGS[@]}" --repeats 2
step bench_train_cudnn 60 "$OUT/bench_train.txt" "$PY" bench/bench_train.py --data "$DATA" \
  "${TRAIN_ARGS[@]}" --repeats 2 --cudnn-benchmark
step bench_train_sweep 120 "$OUT/bench_train.txt" "$PY" bench/bench_train.py --data "$DATA" \
  "${TRAIN_ARGS[@]}" --repeats 2 "${SWEEP_ARGS[@]}"
say "done $(date -u +%H:%M:%S) UTC, $(($(date +%s) - T0)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
