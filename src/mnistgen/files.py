"""Writing files so that a reader never sees half of one: a temporary file in the same folder, then a rename.
Torch-free (``mnistgen data`` must start quickly)."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MnistgenError

FIGURE_DPI = 100  # every PNG figure mnistgen writes


def to_stderr(line: str) -> None:
    """Print ``line`` on stderr: the default ``say`` of notes and warnings, which are not a command's output."""
    print(line, file=sys.stderr)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


TEMPORARY_SUFFIX = ".tmp"


def temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def sync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries to disk, so that a rename in it survives a crash of the machine (POSIX only)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = TEMPORARY_SUFFIX) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the block to write, flushed and renamed onto ``path`` when the block
    ends normally (else ``path`` stays as it was); a failure is one :class:`MnistgenError` naming ``path``."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=suffix, dir=path.parent)
        os.close(fd)
        temporary = Path(name)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        sync_folder(path.parent)
    except OSError as exc:
        raise MnistgenError(f"cannot write {path}: {exc.strerror or exc}; {path.name} is unchanged") from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)  # after the rename there is nothing left to remove


def remove_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Remove the ``.<name>.<random>.tmp`` files a killed :func:`replacing` left in ``folder``, while none writes."""
    for name in names:
        for leftover in Path(folder).glob(f"{temporary_prefix(Path(name))}*{TEMPORARY_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(handle)`` (a file opened with ``mode``), atomically (see :func:`replacing`)."""
    with replacing(path) as temporary, open(temporary, mode) as handle:
        write(handle)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # NumPy and torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: they are written as null rather than as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def json_line(record: Any) -> str:
    """``record`` as one line of JSON (no NaN or inf: null), without the newline."""
    return json.dumps(finite_or_none(record), default=_json_default)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(finite_or_none(obj), indent=2, default=_json_default) + "\n"
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a missing or invalid file is a one-line :class:`MnistgenError`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MnistgenError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise MnistgenError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MnistgenError(f"{path}: not readable ({exc})") from None


def figure_png(figure: Any) -> bytes:
    """A matplotlib Figure as PNG bytes (at :data:`FIGURE_DPI`); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(figure)
    return buffer.getvalue()


def save_figure(path: str | os.PathLike, figure: Any) -> Path:
    """A matplotlib Figure as a PNG file (see :func:`figure_png`), written atomically; returns the path."""
    png = figure_png(figure)
    atomic_write(path, lambda handle: handle.write(png))
    return Path(path)
