"""``mnistgen sweep SWEEP.toml --out DIR`` (argument parsing only; the work: :func:`mnistgen.sweep.run_sweep`)."""

from __future__ import annotations

import argparse
import sys

from ..config import add_config_arguments, config_from_args
from ..errors import MnistgenError, TrainingInterrupted
from ..sweep import SweepOptions, run_sweep
from .common import EXIT_INTERRUPTED

DESCRIPTION = """\
Train every configuration of SWEEP.toml with every seed, each trial an
ordinary run folder DIR/trials/<configuration>/seed=<seed>, and write
DIR/summary.csv and DIR/summary.html: per configuration, the mean of its
headline numbers over the seeds ± a 95% Student-t interval, best first. A
rerun skips finished trials and resumes the others. A failed trial is reported
and the others go on; the exit status is then 1. Ctrl-C stops every trial at
its next step (saved) and exits 130. One sweep at a time may use DIR."""

SWEEP_FILE = """\
the sweep file (TOML):
  model = "vae"          # or "gan"
  seeds = [1, 2, 3]      # or replicas = 3: seeds counting up from [base]'s
                         # seed, else the model's default seed
  [base]                 # settings of every trial
  epochs = 20
  dataset = "mnist-sample"
  [grid]                 # every combination, in the order written
  lr = [1e-3, 3e-3]
  hidden = [100, 500]
  # or, instead of [grid], one table per configuration:
  # [[list]]
  # lr = 1e-3

Each key of [base], [grid] and [[list]] is a flag of `mnistgen vae train` or
`mnistgen gan train` without its dashes (batch_size for --batch-size), checked
as the flag is before anything runs. The seeds come from seeds or replicas
alone, never from a table. More in docs/SCALING.md."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train a grid (or list) of settings times seeds; DIR/summary.csv and DIR/summary.html",
        description=DESCRIPTION, epilog=SWEEP_FILE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", metavar="SWEEP.toml", help="the sweep: model, seeds, [base], [grid] or [[list]]")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder of the sweep (created; reused on a rerun)")
    add_config_arguments(parser, SweepOptions)
    parser.set_defaults(func=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    try:
        result = run_sweep(args.sweep_file, args.out, config_from_args(SweepOptions, args))
    except TrainingInterrupted as exc:
        print(f"mnistgen: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.failed:
        raise MnistgenError(f"{len(result.failed)} of {len(result.results)} trials failed (their errors are above "
                            f"and in {result.html_path})")
    return 0
