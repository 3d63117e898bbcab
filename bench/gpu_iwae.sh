#!/bin/sh
# The VAE's goal on a lent GPU: 3 seeds (replicas, one process) of SPEC's networks on the full protocol, trained
# on the importance-weighted bound, then each seed's test log p(x) (K = 1000): the goal is a mean of at least
# -135.7 nats. A call may run at most 10 minutes: the training stops itself (Ctrl-C, checkpoint kept) after
# $LIMIT seconds; run the script again to continue it (--resume ends exactly where one uninterrupted run would).
#   OUT=/tmp/iwae MNISTGEN_DATA_DIR=... sh bench/gpu_iwae.sh
set -u
OUT=${OUT:-runs/iwae}
LIMIT=${LIMIT:-420}
PY=${PY:-python3}
RUN="$OUT/iwae5-full-cosine"
if [ -f "$RUN/replicas.json" ]; then
  timeout -s INT "$LIMIT" $PY -m mnistgen vae train --out "$RUN" --resume --device cuda
else
  timeout -s INT "$LIMIT" $PY -m mnistgen vae train --out "$RUN" --protocol full --objective iwae --train-samples 5 \
    --epochs 400 --lr-schedule cosine --seeds 1234,1235,1236 --device cuda
fi
echo "training rc=$?"
$PY - "$RUN" <<'PY'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
for folder in sorted(run.glob("seed=*")):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    print(folder.name, f"{len(rows)} epochs", {k: rows[-1][k] for k in rows[-1] if "elbo" in k or k == "lr"})
PY
if $PY -c "import json,sys; sys.exit(json.load(open('$RUN/replicas.json'))['epoch'] < 400)"; then
  $PY -m mnistgen vae eval "$RUN" --device cuda   # each seed's test ELBO and log p(x), then mean ± 95% interval
fi
