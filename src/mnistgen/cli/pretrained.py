"""``mnistgen pretrained list|export``: the trained models shipped with mnistgen (:mod:`mnistgen.pretrained`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrained", help="the trained models shipped with mnistgen: list them, export one as a run folder",
        description="mnistgen ships the weights of its reference trainings (float16), each with the command, "
                    "commit, seed, machine and date that made it and its numbers measured on the weights as stored.")
    commands = parser.add_subparsers(title="pretrained commands", metavar="COMMAND", parser_class=type(parser),
                                     required=True)
    commands.add_parser("list", help="each model with its numbers and provenance",
                        description="Each model: its numbers, what it is and how it was trained.").set_defaults(
        func=run_list)
    export = commands.add_parser(
        "export", help="write a model as an ordinary run folder",
        description="Write the model as a run folder (config.json, checkpoint.pt, metrics.jsonl, ...) that every "
                    "command reads as it reads a trained one (vae plot, gan sample, score, explore, report); "
                    "RUN/pretrained.json holds its provenance. The checkpoint holds the weights, not the optimizer.")
    export.add_argument("name", metavar="NAME", help="a model of mnistgen pretrained list")
    export.add_argument("--out", required=True, metavar="RUN", help="the run folder to write (a new one)")
    export.set_defaults(func=run_export)


def run_list(args: argparse.Namespace) -> int:
    from ..pretrained import headline, manifest

    for name, info in manifest().items():
        print(headline(name))
        print(f"  {info['title']}\n  {info['command']}")
        print(f"  commit {info['commit'][:7]}, seed {info['seed']}, {info['machine']}, {info['date']}")
    print("mnistgen pretrained export NAME --out RUN writes one as a run folder; in Python, "
          "mnistgen.load_pretrained(NAME) loads it")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..pretrained import export

    print(f"written: {export(args.name, args.out).path}")
    return 0
