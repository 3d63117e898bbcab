#!/bin/sh
# The GPU checks and timings, as one script for a lent GPU machine (results in docs/BENCHMARKS.md).
# Each part is time-boxed; its output goes to $OUT/<part>.txt, and its tail to stdout.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
DATA=${MNISTGEN_DATA_DIR:-../shared/data/mnist}
export MNISTGEN_DATA_DIR="$DATA"
PY=${PY:-python3}
part() { name=$1; limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1; echo "rc=$?" >>"$OUT/$name.txt"; grep -v "^mnistgen: note" "$OUT/$name.txt" | tail -40; }
summary() {  # training seconds of a run folder's metrics.jsonl, then the folder is removed (the output stays small)
  $PY - "$1/metrics.jsonl" "$2" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
key = sys.argv[2]
print(f"{len(rows)} epochs: training seconds {sum(r[key] for r in rows):.1f}, all seconds "
      f"{sum(r['seconds'] for r in rows):.1f}, last epoch {rows[-1]}")
PY
  rm -rf "$1"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
part graph_check 150 $PY bench/graph_device_check.py --data-dir "$DATA"
part vae_loop_vs_plain 60 $PY bench/vae_speed.py --device cuda --data-dir "$DATA" --repeat 5
part vae_200_epochs 90 $PY -m mnistgen vae train --device cuda --epochs 200 --data-dir "$DATA" --out "$OUT/vae200"
summary "$OUT/vae200" train_seconds
part gan_100_epochs 120 $PY -m mnistgen gan train --device cuda --epochs 100 --data-dir "$DATA" --out "$OUT/gan100"
summary "$OUT/gan100" seconds
part gan_5_epochs_eager 60 $PY -m mnistgen gan train --device cuda --epochs 5 --cpu-kernels reference --data-dir "$DATA" --out "$OUT/gan5"
summary "$OUT/gan5" seconds
part replica_speed 200 $PY bench/replica_speed.py --device cuda --replicas 8 --repeat 2 --epochs 2 --gan-images 60000 --data-dir "$DATA" --json "$OUT/replica_speed.json"
