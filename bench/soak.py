"""Soak: kill a VAE training run with SIGKILL at random moments, resume it each time, and compare its end with an
uninterrupted run of the same command.

    python bench/soak.py                      # the full form: a 6-epoch hw run, 30 kills (a few minutes)
    python bench/soak.py --epochs 2 --kills 4 # the short form the test suite runs

Each attempt is the real command in a fresh process (``mnistgen vae train --out RUN --checkpoint-seconds 0``, with
``--resume`` once the folder holds a config.json); it is killed after a random delay drawn uniformly from [0, W]
seconds. W starts at S + 1.5 P (S: the uninterrupted run's start-up time, to its first metrics line less one epoch;
P: its time per epoch) and adapts, x1.05 after a kill before the attempt's first epoch and x0.7 after one later:
about one kill in eight then comes after an epoch was recorded, so that the run advances slowly and most kills fall
on the one run, in the start-up (before the first checkpoint too), in the middle of epochs and in their end-of-epoch
writes. After ``--kills`` kills, or once the run is complete, the last attempt runs to the end (and remaining kills
go to a second run of the command). Each run must then hold exactly the uninterrupted run's weights, optimizer state
and metrics (all but the timings). Data: as the command finds them ($MNISTGEN_DATA_DIR, --data-dir, the user cache).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WIDEN, NARROW = 1.05, 0.7  # the kill window after a kill that cost the attempt's progress, and after one later


def command(out: Path, epochs: int, extra: list[str], resume: bool) -> list[str]:
    """The command, writing its checkpoint after every epoch: the most writes a kill can land in."""
    return [sys.executable, "-m", "mnistgen", "vae", "train", "--out", str(out), "--epochs", str(epochs),
            "--checkpoint-seconds", "0", *extra, *(["--resume"] if resume else [])]


def metrics_without_timings(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")} for line in lines]


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def timed_reference(out: Path, epochs: int, extra: list[str]) -> tuple[float, float]:
    """Train the uninterrupted run; returns (start-up seconds S: from the start of the process to its first step,
    seconds per epoch P), S being when the first metrics line appeared, less one epoch."""
    started = time.perf_counter()
    process = subprocess.Popen(command(out, epochs, extra, resume=False), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    first_line = None
    while process.poll() is None:
        if first_line is None and count_lines(out / "metrics.jsonl") >= 1:
            first_line = time.perf_counter() - started
        time.sleep(0.01)
    if process.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {process.stderr.read().strip()}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = sum(record["seconds"] for record in records) / epochs
    first_line = first_line if first_line is not None else time.perf_counter() - started
    return max(first_line - per_epoch, 0.1), per_epoch


def same_state(run: Path, reference: Path) -> dict:
    """Whether ``run`` ended with ``reference``'s weights, optimizer state and metrics (but the timings)."""
    ours = torch.load(run / "checkpoint.pt", weights_only=True)
    theirs = torch.load(reference / "checkpoint.pt", weights_only=True)
    return {
        "same_weights": all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"]),
        "same_optimizer_state": all(torch.equal(a, b) for k in theirs["optimizer"]["state"]
                                    for a, b in zip(ours["optimizer"]["state"][k].values(),
                                                    theirs["optimizer"]["state"][k].values(), strict=True)),
        "same_metrics": metrics_without_timings(run) == metrics_without_timings(reference),
        "leftover_temporaries": sorted(p.name for p in run.glob(".*.tmp")),
    }


def soak(folder: Path, epochs: int = 6, kills: int = 30, seed: int = 0, extra: list[str] | None = None,
         say=print) -> dict:
    """Run the soak in ``folder``; returns what happened, ``identical`` being the verdict.

    Should a run be complete before all the kills were delivered (a machine faster than the reference run
    said), the remaining kills go to another run of the same command in a new folder: every run must end
    identical to the uninterrupted one."""
    extra = list(extra or [])
    reference = folder / "uninterrupted"
    startup, per_epoch = timed_reference(reference, epochs, extra)
    window = startup + 1.5 * per_epoch
    say(f"uninterrupted: {epochs} epochs, start-up {startup:.1f} s, {per_epoch:.1f} s per epoch; kills drawn "
        f"from [0, {window:.1f}] s")
    draws = random.Random(seed)
    delivered, attempts, moments, runs = 0, 0, [], []
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    while delivered < kills:
        run = folder / f"killed-{len(runs) + 1}"
        runs.append(run)
        while True:
            attempts += 1
            before = count_lines(run / "metrics.jsonl")
            finished = (run / "checkpoint.pt").is_file() and before >= epochs
            process = subprocess.Popen(command(run, epochs, extra, (run / "config.json").is_file()),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
            if delivered < kills and not finished:
                delay = draws.uniform(0.0, window)
                try:
                    process.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    delivered += 1
                    moments.append(round(delay, 2))
                    recorded = count_lines(run / "metrics.jsonl")
                    say(f"kill {delivered:2d}/{kills} after {delay:5.2f} s of {window:.1f} ({run.name}: epochs "
                        f"recorded: {recorded})")
                    # about one kill in eight should land after the attempt's first epoch (ln 1.05 / ln(1.05/0.7)):
                    # the run advances, slowly
                    window *= WIDEN if recorded == before else NARROW
                    continue
            _, err = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"attempt {attempts} failed with exit {process.returncode}: {err.strip()}")
            if torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == epochs:
                break
    verdicts = {run.name: same_state(run, reference) for run in runs}
    identical = all(v["same_weights"] and v["same_optimizer_state"] and v["same_metrics"]
                    and not v["leftover_temporaries"] for v in verdicts.values())
    result = {"epochs": epochs, "kills": delivered, "attempts": attempts, "runs": len(runs),
              "kill_moments_s": moments, "verdicts": verdicts, "identical": identical}
    say(json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--folder", default=None, help="where the two runs go (default: a temporary folder)")
    args, extra = parser.parse_known_args()  # anything else goes to `mnistgen vae train`
    if args.folder:
        result = soak(Path(args.folder), args.epochs, args.kills, args.seed, extra)
    else:
        with tempfile.TemporaryDirectory() as folder:
            result = soak(Path(folder), args.epochs, args.kills, args.seed, extra)
    print(f"{'IDENTICAL' if result['identical'] else 'DIFFERENT'} after {result['kills']} kills in "
          f"{result['attempts']} attempts")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
