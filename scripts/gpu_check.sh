#!/usr/bin/env bash
# What a session lent a GPU spends its minutes on (issue 28), as one prepared command, in under 10 minutes:
#   1. the host: GPU, driver, torch, native bf16                         -> $OUT/host.json
#   2. the smoke preset on CUDA in bf16 (every method, synthetic data)   -> $OUT/smoke.log
#   3. one epoch of the paper-size net (ResNet-9 at width 1.0, batch 512): the loop's own train_step timed for
#      float and self-compression in fp32 and bf16, and the epoch time that makes  -> $OUT/step_speed_*.csv
#   4. benchmarks.timing.speed --device cuda over the committed cpu runs  -> $OUT/speed_cuda.csv
#   5. where CIFAR-10 is present ($SCNN_DATA/cifar-10-batches-py) and STUDY=1: the scale study's width-1.0
#      points (experiments/scale.sh full-s0), their run folders copied under $OUT/scale
# Usage, from the repository root (the device tool sets OUT; anywhere else it defaults to ./gpu-check):
#   bash scripts/gpu_check.sh
#   DEVICE=cpu bash scripts/gpu_check.sh   # a rehearsal: every step on the CPU with the timings cut to one
#                                          # round, to check the script itself before a GPU's minutes are spent
# Installs nothing when python3 already imports the project's dependencies (GPU images have torch, pandas,
# matplotlib, tabulate, tqdm, filelock); otherwise it runs `pip install -e .`
# (what the README's `make test` installs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SCNN_OFFLINE=1
case $DEVICE in
  cuda) STEP_ARGS="--repeats 5 --steps 5 --warmup 5"; SPEED_ARGS="--repeats 3"; SMOKE_S=180 ;;
  # a rehearsal: a bf16 smoke grid on 2 busy cores took over 180 s (2026-12-02)
  cpu) STEP_ARGS="--repeats 1 --steps 1 --warmup 1"; SPEED_ARGS="--repeats 1 --seconds 0.05"; SMOKE_S=900 ;;
  *) echo "error: DEVICE must be cuda or cpu (a rehearsal), got $DEVICE" >&2; exit 2 ;;
esac
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: no CUDA device here (or no torch in $PY); run this on a GPU machine (PY=... names its python), or rehearse with DEVICE=cpu" >&2
  exit 2
fi
"$PY" -c "import pandas, matplotlib, tabulate, tqdm, filelock" 2>/dev/null || "$PY" -m pip install -q -e . || exit 2
t0=$SECONDS
step() { echo "== [$((SECONDS - t0)) s] $*" >&2; }

step "host"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
"$PY" - "$OUT/host.json" "$DEVICE" <<'PY'
import json, sys, torch
from benchmarks.device import host
rec = {**host(sys.argv[2]), "torch": torch.__version__, "cuda": torch.version.cuda}
json.dump(rec, open(sys.argv[1], "w"), indent=1)
print(rec)
PY

step "smoke preset on $DEVICE, bf16"
start=$SECONDS
timeout "$SMOKE_S" "$PY" run_all.py --preset smoke --device "$DEVICE" --precision bf16 --out "$OUT/smoke" -q > "$OUT/smoke.log" 2>&1
echo "smoke exit $? in $((SECONDS - start)) s" | tee -a "$OUT/smoke.log"

for precision in bf16 fp32; do
  step "paper-size training step, $precision"
  # shellcheck disable=SC2086  # the arguments split on purpose
  timeout 180 "$PY" -m benchmarks.timing.step_speed "$OUT/steps-$precision" --preset paper --device "$DEVICE" \
    --precision "$precision" --methods float,self_compression $STEP_ARGS \
    && cp "$OUT/steps-$precision/step_speed.csv" "$OUT/step_speed_$precision.csv"
done
"$PY" - "$OUT" <<'PY'
import sys, pandas as pd
from pathlib import Path
from benchmarks.train import steps_per_epoch
rows = [pd.read_csv(f) for f in sorted(Path(sys.argv[1]).glob("step_speed_*.csv"))]
if rows:
    df = pd.concat(rows)
    df["epoch_s (50,000 images)"] = df.step_ms / 1000 * steps_per_epoch(50_000, 512)
    print(df[["method", "precision", "step_ms", "images_per_s", "epoch_s (50,000 images)"]].to_markdown(index=False))
PY

step "inference speed of the committed cpu runs on $DEVICE"
# on a copy: the tool writes speed.csv and rebuilds the reports in the folder it times, and results/cpu's
# speed.csv is the idle-CPU measurement the README cites
copy=$(mktemp -d)
cp -r results/cpu "$copy/cpu"
# shellcheck disable=SC2086
timeout 240 "$PY" -m benchmarks.timing.speed "$copy/cpu" --device "$DEVICE" $SPEED_ARGS > "$OUT/speed.log" 2>&1 \
  && cp "$copy/cpu/speed.csv" "$OUT/speed_$DEVICE.csv"
rm -rf "$copy"
tail -5 "$OUT/speed.log"

if [[ $DEVICE == cuda && "${STUDY:-0}" == 1 && -d "${SCNN_DATA:-data}/cifar-10-batches-py" ]]; then
  step "scale study, width 1.0, seed 0"
  PY="$PY" bash experiments/scale.sh full-s0 > "$OUT/scale.log" 2>&1
  tar czf "$OUT/scale-runs.tar.gz" results/scale/runs results/scale/cache/float-*.pt 2>/dev/null
fi
step "done"
