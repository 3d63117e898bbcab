"""What the sub-command modules share: exit codes, one-line messages, output files, the training commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..config import RESUMABLE_FIELDS, add_config_arguments, config_from_args
from ..errors import MnistgenError, UsageError

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def usage_line(prog: str, message: str) -> str:
    """A usage error as one line that names the help of the command that was run."""
    return f"{prog}: error: {printable(message)} (see {prog} --help)\n"


def printable(message: str) -> str:
    """``message`` as one printable line: control characters (a newline, a terminal's escape) as Python escapes them."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)


def given_flags(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """The flags of ``names`` given on the command line, as typed (``--name value``, ``--name`` or ``--no-name``)."""
    words = []
    for name in names:
        value, flag = getattr(args, name, None), "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            words += [flag, str(value)]
    return words


def writable_output(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output file that could not be written (a missing folder is not created); returns
    the path. Writability is tried with a file: ``os.access`` answers yes to root on read-only file systems."""
    import tempfile

    from ..files import TEMPORARY_SUFFIX, temporary_prefix

    path = Path(path).expanduser()
    folder = path.parent
    if not folder.is_dir():
        raise MnistgenError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MnistgenError(f"{flag} {path}: the folder {folder} is not writable")
    if path.is_dir():
        raise MnistgenError(f"{flag} {path}: is a folder, not a file")
    try:
        with tempfile.TemporaryFile(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=folder):
            pass
    except OSError as exc:
        raise MnistgenError(f"{flag} {path}: the folder {folder} is not writable ({exc.strerror or exc})") from None
    return path


def npy_output(text: str) -> Path:
    """The ``--out`` of a command that writes an array: a .npy file in an existing, writable folder."""
    out = Path(text).expanduser()
    if out.suffix != ".npy":
        raise UsageError(f"--out {text}: the file name must end with .npy")
    return writable_output(out, "--out")


def add_train_command(commands, config_class: type, run: Callable[[argparse.Namespace], int], help_text: str,
                      description: str) -> None:
    """A model's ``train`` sub-command: --out RUN, --resume (naming what may change) and the config's flags."""
    train = commands.add_parser("train", help=help_text, description=description)
    train.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or continue with --resume)")
    flags = ", ".join("--" + name.replace("_", "-") for name in RESUMABLE_FIELDS[config_class])
    train.add_argument("--resume", action="store_true", help="continue the run in RUN from its checkpoint, with its "
                       f"saved settings (only {flags} and where the data are found may change)")
    add_config_arguments(train, config_class)
    train.set_defaults(func=run)


def train_command(args: argparse.Namespace, kind: str, config_class: type, train: Callable[[Any, Any], Any],
                  summary: Callable[[dict[str, Any]], str]) -> int:
    """``mnistgen vae|gan train``, under torchrun too; ``train(config, run)`` returns the history."""
    from ..distributed import from_main_rank, is_main_process, ranks_agree, torchrun_job
    from ..errors import TrainingInterrupted
    from ..runs import RunDir

    run = RunDir(args.out)
    with torchrun_job():
        base = from_main_rank(lambda: run.read_config_to_resume(kind, config_class)) if args.resume else None
        with ranks_agree():
            config = config_from_args(config_class, args, base)
        try:
            history = train(config, run)
        except TrainingInterrupted as exc:
            if is_main_process():
                print(f"mnistgen: {exc}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if not is_main_process():
            return 0
        histories = history if isinstance(history, dict) else {None: history}
        for seed, records in histories.items():
            if records:
                where = run.path if seed is None else run.seed_run(seed).path
                print(f"epoch {records[-1]['epoch']}/{config.epochs}: {summary(records[-1])}; run folder {where}")
    return 0
