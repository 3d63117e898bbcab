"""What the sub-command modules share: exit codes, one-line messages, output files."""

from __future__ import annotations

from pathlib import Path

from ..errors import MnistgenError, UsageError

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def usage_line(prog: str, message: str) -> str:
    """A usage error as one line that names the help of the command that was run."""
    return f"{prog}: error: {printable(message)} (see {prog} --help)\n"


def printable(message: str) -> str:
    """``message`` as one printable line: a control character (a newline, or one from a file's content that a
    terminal would act on) is shown escaped, as Python writes it in a string."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)


def writable_output(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output file that could not be written (its folder missing, not a folder, or not
    writable); returns the path. Writability is tried, by creating and removing a file there: ``os.access`` answers
    yes to root on read-only file systems and immutable folders, and cannot know some network file systems' rules."""
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
    """The ``--out`` of a command that writes an array: a .npy file in an existing, writable folder."""
    out = Path(text).expanduser()
    if out.suffix != ".npy":
        raise UsageError(f"--out {text}: the file name must end with .npy")
    return writable_output(out, "--out")


def save_npy(out: Path, array) -> None:
    """Write ``array`` to ``out`` atomically (a reader never sees half an array)."""
    import numpy as np

    from ..files import atomic_write

    atomic_write(out, lambda handle: np.save(handle, array))
