#!/usr/bin/env bash
# Issue 14's discriminating experiments for the self-compression recipe on the `cpu` net, into
# results/sc-recipe/ (resumable: a rerun skips finished runs; SEEDS=0,1,2 for more seeds).
#   bash experiments/sc_recipe.sh                  # every experiment, in the order below
#   bash experiments/sc_recipe.sh grace long       # the named ones, in the order given
#   GAMMA=0.03 bash experiments/sc_recipe.sh eps lr   # the same screen at another γ
# Every self-compression run fine-tunes the cached float model at γ = $GAMMA (0.1) unless its line says otherwise;
# `baseline` is the cpu grid's point at that γ (the paper's recipe: Adam lr 0.5, eps 1e-8, scheduled).
# The screens keep the statistics training left (--bn-batches 0), as they were run before BatchNorm calibration
# existed; experiments/bn_reestimation.py adds the calibrated accuracy of each run to the comparison.
set -euo pipefail
# --help: the comment block above, without its leading "# "
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export SCNN_DATA=${SCNN_DATA:-../shared/data}
OUT=${OUT:-results/sc-recipe}
SEEDS=${SEEDS:-0}
GAMMA=${GAMMA:-0.1}

declare -A EXP
ORDER=()
exp() { ORDER+=("$1"); EXP[$1]="${*:2}"; }
SC="--methods self_compression --grid self_compression.from_float=true --grid self_compression.gamma=$GAMMA"

exp baseline    $SC
# (a) the b/e optimizer: Adam lr 0.5 with eps 1e-8 takes ~0.5-bit steps whatever the gradient
exp eps         $SC --grid self_compression.eps_bits=1e-3
exp lr          $SC --grid self_compression.lr_bits=0.05
exp lr-eps      $SC --grid self_compression.lr_bits=0.05 --grid self_compression.eps_bits=1e-3
# (c) removal timing: no channel dies and γ ramps up over the first quarter
exp grace       $SC --grid self_compression.grace=0.25 --grid self_compression.gamma_warmup=0.25
# (b) the schedule: b/e at a constant rate; 16 epochs instead of 8
exp constant    $SC --grid self_compression.bits_schedule=constant
exp long        $SC --epochs 16
# the equal-budget float controls of the 8- and 16-epoch fine-tuning
exp control     --methods float_control --grid float_control.like=self_compression
exp control-long --methods float_control --grid float_control.like=self_compression --epochs 16
# from scratch with the fine-tuning's whole budget (the float model's 14 epochs plus 8), and its float control
exp scratch     --methods self_compression --grid self_compression.gamma=$GAMMA --grid self_compression.from_float=false --epochs 22
exp scratch-control --methods float_control --grid float_control.like=self_compression --grid float_control.from_float=false --epochs 22

for name in "${@:-${ORDER[@]}}"; do
  [[ -n "${EXP[$name]+x}" ]] || { echo "unknown experiment $name; known: ${ORDER[*]}" >&2; exit 2; }
  echo "== $name" >&2
  # shellcheck disable=SC2086  # the stored arguments split on purpose
  "$PY" run_all.py --preset cpu --out "$OUT" --seeds "$SEEDS" --bn-batches 0 ${EXP[$name]}
done
