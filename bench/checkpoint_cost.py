"""What writing the checkpoint after every epoch costs the VAE: `mnistgen vae train` with `--checkpoint-seconds 0`
(checkpoint.pt and the metrics line after every epoch) against the default (every 10 s), in turn, in one process.

After an untimed 1-epoch run (what a process does once), each repetition trains a new run of `--epochs` epochs with
each setting, through `mnistgen.train_vae` (SPEC's defaults otherwise). Per run: the wall time, the seconds
metrics.jsonl gives the epochs (the steps and the held-out ELBO) and the rest, the time outside the epochs
(start-up, writes), per epoch. It prints the medians and their ratios, and each setting's last test ELBO, which must
be the same (the writes change no number).

    python bench/checkpoint_cost.py --data-dir ../shared/data/mnist --epochs 200 --repeat 3
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench_args import bench_parser, parse_bench_args

import mnistgen
from mnistgen.config import CHECKPOINT_SECONDS

SETTINGS = {"after every epoch": 0.0, f"every {CHECKPOINT_SECONDS:g} s": CHECKPOINT_SECONDS}


def timed_run(out: Path, data_dir: str, epochs: int, seconds: float) -> tuple[float, float, float]:
    """(wall seconds, seconds outside the epochs per epoch, last test ELBO) of one new run."""
    started = time.perf_counter()
    run = mnistgen.train_vae(out, data_dir=data_dir, offline=True, epochs=epochs, checkpoint_seconds=seconds,
                             show_progress=False)
    wall = time.perf_counter() - started
    inside = sum(record["seconds"] for record in run.metrics)
    return wall, (wall - inside) / epochs, run.metrics[-1]["test_elbo"]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parse_bench_args(parser)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as folder:
        timed_run(Path(folder) / "warm-up", args.data_dir, 1, 0.0)  # loads and builds what a process does once
        for repetition in range(args.repeat):
            for name, seconds in SETTINGS.items():
                result = timed_run(Path(folder) / f"{repetition}-{seconds:g}", args.data_dir, args.epochs, seconds)
                results[name].append(result)
                print(f"{name}: {result[0]:.2f} s, {1e3 * result[1]:.1f} ms an epoch outside the epochs", flush=True)
    every, default = SETTINGS
    wall = {name: statistics.median(r[0] for r in rs) for name, rs in results.items()}
    outside = {name: statistics.median(r[1] for r in rs) for name, rs in results.items()}
    print(f"medians over {args.repeat}: {every} {wall[every]:.2f} s, {default} {wall[default]:.2f} s; wall ratio "
          f"{wall[every]:.2f} / {wall[default]:.2f} = {wall[every] / wall[default]:.3f}")
    print(f"outside the epochs, per epoch: {1e3 * outside[every]:.1f} ms against {1e3 * outside[default]:.1f} ms: "
          f"{1e3 * (outside[every] - outside[default]):.1f} ms an epoch")
    elbos = {r[2] for rs in results.values() for r in rs}
    print(f"last test ELBO: {', '.join(f'{e:.4f}' for e in sorted(elbos))} (one value: the writes change no number)")


if __name__ == "__main__":
    main()
