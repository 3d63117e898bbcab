"""One GAN training over several seeds, scored on the way: trained with ``--epochs`` from the start (as a user runs
it; a setting that depends on the number of epochs sees the whole), stopped after each epoch of ``--score-at`` to
draw 10,000 samples of every seed (the moving average and the trained G) and score them, then continued. The
files are those of bench/gan_recipes.sh (OUT/seed=N/epochE-{average,raw}.score.json), so that
bench/gan_recipes_summary.py and bench/gan_best_worst.py read them; a run stopped on the way continues where it
stands when the command is given again.

    python bench/gan_scored_run.py runs/recipes/imp-b32 --seeds 2,3,4,5,6 --epochs 100 --score-at 30,100 \
        --settings '{"recipe": "improved", "batch_size": 32}'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import mnistgen
from mnistgen.errors import TrainingInterrupted

MNIST_TRAINING_IMAGES = 60_000  # the run's data: an epoch is its full batches (the loop drops the last part)


def epochs_done(out: Path, seed: int) -> int:
    metrics = out / f"seed={seed}" / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def sample_and_score(out: Path, seeds: list[int], epoch: int) -> None:
    files = []
    for seed in seeds:
        for kind, flags in (("average", []), ("raw", ["--raw"])):
            path = out / f"seed={seed}" / f"epoch{epoch}-{kind}.npy"
            subprocess.run([sys.executable, "-m", "mnistgen", "gan", "sample", str(path.parent), "--n", "10000",
                            "--out", str(path), *flags], check=True, stdout=subprocess.DEVNULL)
            files.append(path)
    with open(out.parent / f"{out.name}-score-epoch{epoch}.txt", "w") as report:
        subprocess.run([sys.executable, "-m", "mnistgen", "score", *map(str, files)], check=True, stdout=report)
    for path in files:
        path.unlink()  # 31 MB each; the .score.json stays
    print(f"scored epoch {epoch}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the replica run folder")
    parser.add_argument("--seeds", default="2,3,4,5,6", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=100, help="the training's --epochs")
    parser.add_argument("--score-at", default="30,100", help="comma-separated epochs to score")
    parser.add_argument("--settings", default="{}", help="the training's settings, as mnistgen.train_gan's keywords")
    args = parser.parse_args()
    out, seeds = Path(args.out), [int(seed) for seed in args.seeds.split(",")]
    settings = {**json.loads(args.settings), "seeds": args.seeds, "epochs": args.epochs, "threads": 1}
    for epoch in sorted(int(text) for text in args.score_at.split(",")):
        if (out / f"seed={seeds[0]}" / f"epoch{epoch}-average.score.json").is_file():
            continue
        try:
            mnistgen.train_gan(out, resume=out.exists(), show_progress=False,
                               stop=lambda epoch=epoch: epochs_done(out, seeds[0]) >= epoch,
                               **({} if out.exists() else settings))
        except TrainingInterrupted:  # stopped after the epoch to score, before the next one's first step
            pass
        sample_and_score(out, seeds, epoch)


if __name__ == "__main__":
    main()
