#!/bin/sh
# The GAN's training options measured: SPEC's defaults, each option, their combinations, --recipe improved, 3 seeds
# each (replicas), scored with `mnistgen score` (10,000 samples per seed) at the given epoch, the moving average and the
# trained G alike. Run it with 30, then with 100: the second call continues each training from its epoch 30.
# Every training keeps an EMA of G: it does not change the training, so each run gives the option without the
# average (--raw) and with it. Two trainings run at a time, one torch thread each.
#   OUT=runs/recipes MNISTGEN_DATA_DIR=../shared/data/mnist sh bench/gan_recipes.sh 30   # then 100
#   CONFIGS="b32 fastd" OUT=... sh bench/gan_recipes.sh 30                              # only these trainings
set -eu
OUT=${OUT:-runs/recipes}
EPOCHS=${1:-30}
SEEDS=${SEEDS:-2,3,4}
CONFIGS=${CONFIGS:-spec betas ttur combo improved}
PY=${PY:-python}
mkdir -p "$OUT"
flags() {  # the flags of one named training (beside --seeds, --epochs, --threads)
  case $1 in
    spec) echo "--ema-decay 0.999" ;;
    betas) echo "--ema-decay 0.999 --betas 0.5,0.999" ;;
    ttur) echo "--ema-decay 0.999 --lr-d 4e-4 --lr-g 1e-4" ;;
    combo) echo "--ema-decay 0.999 --betas 0.5,0.999 --lr-d 4e-4 --lr-g 1e-4" ;;
    improved) echo "--recipe improved" ;;  # its values: GAN_RECIPES in src/mnistgen/config.py
    imp-nor1) echo "--recipe improved --r1-gamma off" ;;  # the recipe as it was before its R1 penalty
    b32) echo "--betas 0.5,0.999 --lr-d 4e-4 --lr-g 1e-4 --batch-size 32 --ema-decay 0.9999" ;;
    fastd) echo "--betas 0.5,0.999 --lr-d 1e-3 --lr-g 2e-4 --batch-size 64 --ema-decay 0.9999" ;;
    imp-b32) echo "--recipe improved --batch-size 32" ;;
    imp-lrg1e-4) echo "--recipe improved --lr-g 1e-4" ;;
    imp-lrd2e-3) echo "--recipe improved --lr-d 2e-3" ;;
    imp-b32-r1g1e-2) echo "--recipe improved --batch-size 32 --r1-gamma 0.01" ;;
    imp-b32-r1g1e-1) echo "--recipe improved --batch-size 32 --r1-gamma 0.1" ;;
    imp-r1g1e-1) echo "--recipe improved --r1-gamma 0.1" ;;
    imp-r1g1) echo "--recipe improved --r1-gamma 1" ;;
    imp-r1g3e-2) echo "--recipe improved --r1-gamma 0.03" ;;
    imp-ema9999) echo "--recipe improved --ema-decay 0.9999" ;;
    imp-b0) echo "--recipe improved --betas 0.0,0.99" ;;
    imp-b0-ema9999) echo "--recipe improved --betas 0.0,0.99 --ema-decay 0.9999" ;;
    imp-t3c14) echo "--recipe improved --translate 3 --cutout 14" ;;  # DiffAugment's policy at its sizes
    imp-t2) echo "--recipe improved --translate 2" ;;
    imp-ema9999-warm) echo "--recipe improved --ema-decay 0.9999 --ema-warmup" ;;
    imp-b0-ema9999-warm) echo "--recipe improved --betas 0.0,0.99 --ema-decay 0.9999 --ema-warmup" ;;
    imp-b05) echo "--recipe improved --betas 0.5,0.999 --lr-d 1e-3 --lr-g 2e-4" ;;  # the recipe before StyleGAN2's Adam
    imp-b0-lr15) echo "--recipe improved --betas 0.0,0.99 --lr-d 1.5e-3 --lr-g 3e-4" ;;
    imp-b0-lr15-ema999) echo "--recipe improved --betas 0.0,0.99 --lr-d 1.5e-3 --lr-g 3e-4 --ema-decay 0.999" ;;
    *) echo "gan_recipes.sh: unknown configuration '$1'" >&2; exit 2 ;;
  esac
}
train() {  # name: train (or continue) to $EPOCHS epochs
  name=$1
  if [ -f "$OUT/$name/replicas.json" ]; then
    $PY -m mnistgen gan train --out "$OUT/$name" --resume --epochs "$EPOCHS" --threads 1 > "$OUT/$name.log" 2>&1
  else
    # shellcheck disable=SC2046
    $PY -m mnistgen gan train --out "$OUT/$name" --seeds "$SEEDS" --epochs "$EPOCHS" --threads 1 $(flags "$name") \
      > "$OUT/$name.log" 2>&1
  fi
}
for name in $CONFIGS; do flags "$name" > /dev/null; done  # refuse an unknown name before any training
finished() {  # pid...: wait for each; a training that failed or was interrupted stops the script before any scoring
  for pid in "$@"; do
    wait "$pid" || { echo "gan_recipes.sh: a training failed (see $OUT/*.log); nothing scored" >&2; exit 1; }
  done
}
set -- $CONFIGS
while [ $# -gt 0 ]; do  # two at a time
  train "$1" & pids=$!
  if [ $# -gt 1 ]; then train "$2" & pids="$pids $!"; shift; fi
  shift
  finished $pids
done
files=""
for name in $CONFIGS; do
  for seed in $(echo "$SEEDS" | tr , ' '); do
    run="$OUT/$name/seed=$seed"
    $PY -m mnistgen gan sample "$run" --n 10000 --out "$run/epoch$EPOCHS-average.npy" > /dev/null
    $PY -m mnistgen gan sample "$run" --n 10000 --raw --out "$run/epoch$EPOCHS-raw.npy" > /dev/null
    files="$files $run/epoch$EPOCHS-average.npy $run/epoch$EPOCHS-raw.npy"
  done
done
$PY -m mnistgen score $files > "$OUT/score-epoch$EPOCHS.txt"
rm -f $files  # the arrays (31 MB each); their .score.json stay
echo "scored epoch $EPOCHS: $OUT/score-epoch$EPOCHS.txt"
