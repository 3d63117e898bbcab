#!/bin/sh
# Issue 15's GAN measurement: SPEC's defaults, each option, their combination and --recipe improved (the
# combination with batch 64), 3 seeds each (replicas), scored with `mnistgen score` (10,000 samples per seed) at
# epochs 30 and 100, the moving average and the trained G alike.
# Every training keeps an EMA of G (--ema-decay 0.999): it does not change the training, so each run gives the
# option without the average (--raw) and with it. Two trainings run at a time, one torch thread each.
#   OUT=runs/recipes MNISTGEN_DATA_DIR=../shared/data/mnist sh bench/gan_recipes.sh 30   # then 100
set -eu
OUT=${OUT:-runs/recipes}
EPOCHS=${1:-30}
SEEDS=${SEEDS:-2,3,4}
PY=${PY:-python}
mkdir -p "$OUT"
train() {  # name, flags...: train (or continue) to $EPOCHS epochs
  name=$1; shift
  if [ -f "$OUT/$name/replicas.json" ]; then
    $PY -m mnistgen gan train --out "$OUT/$name" --resume --epochs "$EPOCHS" --threads 1 > "$OUT/$name.log" 2>&1
  else
    $PY -m mnistgen gan train --out "$OUT/$name" --seeds "$SEEDS" --epochs "$EPOCHS" --threads 1 "$@" \
      > "$OUT/$name.log" 2>&1
  fi
}
train spec --ema-decay 0.999 &
train betas --ema-decay 0.999 --betas 0.5,0.999 &
wait
train ttur --ema-decay 0.999 --lr-d 4e-4 --lr-g 1e-4 &
train combo --ema-decay 0.999 --betas 0.5,0.999 --lr-d 4e-4 --lr-g 1e-4 &
wait
train improved --recipe improved &  # the combination with a batch of 64: 4x the steps per epoch
wait
files=""
for name in spec betas ttur combo improved; do
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
