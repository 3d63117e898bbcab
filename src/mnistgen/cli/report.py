"""``mnistgen reproduce`` (the whole specification into one folder and its report) and ``mnistgen report``."""

from __future__ import annotations

import argparse

from .common import given_flags


def register(subparsers) -> None:
    from ..config import REPRODUCE_QUICK, ReproduceConfig, add_config_arguments

    quick = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in REPRODUCE_QUICK.items())
    reproduce = subparsers.add_parser(
        "reproduce", help="run the whole specification (VAE, GAN, scores) and write RUN/report.html",
        description="Train and evaluate the VAE, train the GAN, score both models' samples against the real-vs-real "
                    "reference, and write RUN/report.html (and RUN/explorer.html). Every stage is recorded with its "
                    "time in RUN/stages.json.")
    reproduce.add_argument("--out", required=True, metavar="RUN", help="folder of the reproduction (created)")
    reproduce.add_argument("--quick", action="store_true",
                           help=f"a first look in about a minute on a 2-core CPU: {quick} (flags given still win)")
    reproduce.add_argument("--resume", action="store_true",
                           help="continue an interrupted reproduction in RUN: finished stages are kept, an "
                                "interrupted training continues from its checkpoint (with RUN's saved settings)")
    add_config_arguments(reproduce, ReproduceConfig)
    reproduce.set_defaults(func=run_reproduce)

    report = subparsers.add_parser(
        "report", help="(re)build RUN/report.html from a reproduction or run folder",
        description="Build one self-contained HTML page (figures embedded, no network) from a reproduction "
                    "folder (mnistgen reproduce) or from one VAE or GAN run folder.")
    report.add_argument("run", metavar="RUN", help="reproduction, VAE or GAN run folder")
    report.add_argument("--out", metavar="FILE", help="where to write the page (default: RUN/report.html)")
    report.set_defaults(func=run_report)


def run_reproduce(args: argparse.Namespace) -> int:
    from ..config import REPRODUCE_QUICK, ReproduceConfig, config_from_args
    from ..reproduce import flat_fields, quick_config, reproduce

    names = list(flat_fields(ReproduceConfig()))  # the settings' flags by field name; argparse leaves unset ones None
    explicit = {name for name in names if getattr(args, name, None) is not None}
    if args.quick:
        explicit |= set(REPRODUCE_QUICK)  # the fields --quick sets
    config = config_from_args(ReproduceConfig, args, quick_config() if args.quick else None)
    report = reproduce(args.out, config, resume=args.resume, explicit=explicit, command=command_line(args, names))
    print(f"report: {report}")
    return 0


def command_line(args: argparse.Namespace, names: list[str]) -> list[str]:
    """The command as typed, rebuilt from the parsed flags (for the record in RUN/stages.json)."""
    switches = [flag for flag, given in (("--quick", args.quick), ("--resume", args.resume)) if given]
    return ["mnistgen", "reproduce", "--out", args.out, *switches, *given_flags(args, names)]


def run_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    print(write_report(args.run, args.out))
    return 0
