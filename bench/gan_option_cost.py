"""What a GAN training option costs: the epoch time of ``mnistgen.train_gan`` (the loop's own ``seconds``: its steps,
not the start-up probes) for each set of settings, one seed, one thread, taking turns in this process (the order
rotated each repetition); the medians and their ratio to the first set's.

    MNISTGEN_DATA_DIR=../shared/data/mnist python bench/gan_option_cost.py --repeat 3 \
        '{"recipe": "improved"}' '{"recipe": "improved", "batch_size": 32}' \
        '{"recipe": "improved", "batch_size": 32, "r1_gamma": 0.01}'

``{"instance_noise": sigma}`` in a set trains it with bench/gan_instance_noise.py's noise (sigma at every step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
from pathlib import Path

from gan_instance_noise import InstanceNoise, installed

import mnistgen


def epoch_seconds(settings: dict, folder: Path, epochs: int) -> float:
    settings = dict(settings)
    sigma = settings.pop("instance_noise", None)  # bench/gan_instance_noise.py's, not a mnistgen setting
    with installed(InstanceNoise(sigma, total_steps=10**9)) if sigma else contextlib.nullcontext():
        mnistgen.train_gan(folder, show_progress=False, epochs=epochs, threads=1, **settings)
    return statistics.mean(json.loads(line)["seconds"] for line in (folder / "metrics.jsonl").read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", help="mnistgen.train_gan's keywords, as JSON; the first is the baseline")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of each set")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timing")
    args = parser.parse_args()
    sets = [json.loads(text) for text in args.settings]
    times: list[list[float]] = [[] for _ in sets]
    with tempfile.TemporaryDirectory() as scratch:
        for repetition in range(args.repeat):
            for turn in range(len(sets)):
                k = (turn + repetition) % len(sets)
                times[k].append(epoch_seconds(sets[k], Path(scratch) / f"{repetition}-{k}", args.epochs))
    base = statistics.median(times[0])
    print(f"| settings | s per epoch (median of {args.repeat}) | x the first |")
    print("|---|---:|---:|")
    for settings, seconds in zip(sets, times, strict=True):
        median = statistics.median(seconds)
        print(f"| {json.dumps(settings)} | {median:.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
