"""The ``mnistgen`` command: one parser built on demand (nothing happens at import time).

Each command family lives in its own module exposing ``register(subparsers)``; a family's
subcommands set ``func`` to the function that runs them. User errors (:class:`MnistgenError`) print
one line to stderr and exit 1; bad flags, and flag values out of bounds (:class:`UsageError`), exit 2 with one
line; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import MnistgenError, UsageError
from ..version import __version__

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``mnistgen vae train: error: ...``), not a usage dump."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the innermost (sub)command's defaults win: after parsing, ``usage_prog`` names the command that ran
        self.set_defaults(usage_prog=self.prog)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, usage_line(self.prog, message))


def usage_line(prog: str, message: str) -> str:
    """A usage error as one line that names the help of the command that was run."""
    return f"{prog}: error: {printable(message)} (see {prog} --help)\n"


def writable_output(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output file that could not be written: its folder missing (never created), not a
    folder, or not writable; returns the path. Writability is tried, not guessed: a file is created in the folder and
    removed at once (an unnamed one where the system allows). ``os.access`` alone answers yes to root everywhere but on
    read-only file systems and immutable folders, and cannot know the rules of some network file systems."""
    import tempfile

    from ..files import TEMPORARY_SUFFIX, check_output_file, temporary_prefix

    path = check_output_file(path, flag)
    folder = path.parent
    try:
        with tempfile.TemporaryFile(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=folder):
            pass
    except OSError as exc:
        raise MnistgenError(f"{flag} {path}: the folder {folder} is not writable ({exc.strerror or exc})") from None
    return path


def npy_output(text: str) -> Path:
    """The ``--out`` of a command that writes an array: a .npy file in an existing, writable folder (checked before any
    work; the folder is not created)."""
    out = Path(text).expanduser()
    if out.suffix != ".npy":
        raise UsageError(f"--out {text}: the file name must end with .npy")
    return writable_output(out, "--out")


def save_npy(out: Path, array) -> None:
    """Write ``array`` to ``out`` atomically (a reader never sees half an array)."""
    import numpy as np

    from ..files import atomic_write

    atomic_write(out, lambda handle: np.save(handle, array))


def printable(message: str) -> str:
    """``message`` as one printable line: a control character (a newline, or one from a file's content that a
    terminal would act on) is shown escaped, as Python writes it in a string."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)


def build_parser() -> argparse.ArgumentParser:
    from . import data as data_commands
    from . import families

    parser = OneLineParser(
        prog="mnistgen",
        description="Train, evaluate and draw a 2-D-latent VAE and a small convolutional GAN of digits.",
    )
    parser.add_argument("--version", action="version", version=f"mnistgen {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=OneLineParser)
    subparsers.required = True
    data_commands.register(subparsers)
    for family in families.FAMILIES:
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
