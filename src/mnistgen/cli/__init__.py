"""The ``mnistgen`` command: one parser built on demand; each family's module has ``register(subparsers)``. A user
error is one line and exit 1, a bad flag or value one line and exit 2, Ctrl-C exit 130."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import MnistgenError, UsageError
from ..version import __version__
from .common import EXIT_INTERRUPTED, EXIT_USAGE, EXIT_USER_ERROR, printable, usage_line


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``mnistgen vae train: error: ...``), not a usage dump, and a flag is
    its whole name (``--epoch`` is not taken for ``--epochs``, as the Python API's ``epoch=`` is not either)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})
        # the innermost (sub)command's defaults win: after parsing, ``usage_prog`` names the command that ran
        self.set_defaults(usage_prog=self.prog)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, usage_line(self.prog, message))


def build_parser() -> argparse.ArgumentParser:
    from . import data, experiment, explore, gan, pretrained, report, score, sweep, vae

    parser = OneLineParser(prog="mnistgen", description="Train, evaluate and draw a 2-D-latent VAE and a small "
                                                        "convolutional GAN of digits.")
    parser.add_argument("--version", action="version", version=f"mnistgen {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=OneLineParser, required=True)
    for family in (data, vae, gan, score, experiment, report, explore, pretrained, sweep):  # in mnistgen --help's order
        family.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UsageError as exc:
        sys.stderr.write(usage_line(getattr(args, "usage_prog", "mnistgen"), str(exc)))
        return EXIT_USAGE
    except MnistgenError as exc:
        print(f"mnistgen: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mnistgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    return int(result or 0)


def run() -> None:
    sys.exit(main())
