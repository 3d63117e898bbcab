"""``mnistgen sweep SWEEP.toml --out DIR``: a grid (or list) of settings times seeds (argument parsing only).

The work is done by :func:`mnistgen.sweep.run_sweep`.
"""

from __future__ import annotations

import argparse

from ..config import add_config_arguments, config_from_args
from ..errors import MnistgenError
from ..sweep import SweepOptions, run_sweep


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train a grid (or list) of settings times seeds; DIR/summary.csv and DIR/summary.html",
        description="Train every configuration of SWEEP.toml with every seed, each trial an ordinary run folder "
                    "DIR/trials/<configuration>/seed=<seed>, and write DIR/summary.csv and DIR/summary.html: per "
                    "configuration, the mean of its headline numbers over the seeds ± a 95% Student-t interval, "
                    "best first. A rerun skips finished trials and resumes interrupted ones. A failed trial is "
                    "reported and the others go on; the exit status is then 1. The sweep file's format is in "
                    "docs/SCALING.md (section 'Sweeps, locally and on a cluster').")
    parser.add_argument("sweep_file", metavar="SWEEP.toml", help="the sweep: model, seeds, [base], [grid] or [[list]]")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder of the sweep (created; reused on a rerun)")
    add_config_arguments(parser, SweepOptions)
    parser.set_defaults(func=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    result = run_sweep(args.sweep_file, args.out, config_from_args(SweepOptions, args))
    if result.failed:
        raise MnistgenError(f"{len(result.failed)} of {len(result.results)} trials failed (their errors are above "
                            f"and in {result.html_path})")
    return 0
