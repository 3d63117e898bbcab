"""The run folder: config, metrics, checkpoints and figures of one run, kept together.

Layout of a run folder ``RUN/``::

    RUN/config.json       the config dataclass as JSON, plus "mnistgen_version" and "environment"
    RUN/metrics.jsonl     one JSON object per epoch, appended as training goes
    RUN/checkpoint.pt     the latest state (weights, optimizers, RNG states, epoch), written atomically
    RUN/data.json         provenance of the data used (dataset, files, checksums, or the sample)
    RUN/figures/*.png     figures made by ``plot`` commands
    RUN/eval.json         results of ``eval``

All file writing of training goes through this module, and only the rank-0 process writes
(:func:`is_main_process`), so the loops can later run under torchrun unchanged.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import from_dict
from .errors import MnistgenError


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialised torch.distributed job."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` via a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as pretty JSON."""
    text = json.dumps(_finite_or_none(obj), indent=2, default=_json_default) + "\n"
    atomic_write(path, lambda h: h.write(text), mode="w")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MnistgenError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise MnistgenError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a dict of tensors and plain values (loadable with ``weights_only=True``)."""
    atomic_write(path, lambda h: torch.save(state, h))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); a missing or corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MnistgenError(f"{path}: no checkpoint here (train first, or check the run folder)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise MnistgenError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- metadata


def environment() -> dict[str, Any]:
    """Versions and machine: saved with every run so a number can be traced to what produced it."""
    import numpy

    info = {
        "mnistgen": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return info


class RunDir:
    """Paths of one run folder, and the only place that writes into it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    data = property(lambda self: self.path / "data.json")
    figures = property(lambda self: self.path / "figures")
    eval = property(lambda self: self.path / "eval.json")

    def require(self) -> RunDir:
        if not self.config.is_file():
            raise MnistgenError(f"{self.path}: not a run folder (no config.json)")
        return self

    def write_config(self, config_dict: dict[str, Any], kind: str) -> None:
        if is_main_process():
            write_json(self.config, {"kind": kind, "mnistgen_version": __version__,
                                     "environment": environment(), "config": config_dict})

    def read_config(self) -> dict[str, Any]:
        return read_json(self.require().config)

    def read_config_as(self, kind: str, config_class: type, expected: str) -> Any:
        """The run's config as ``config_class``, if config.json says the run is of ``kind``; else a one-line
        error ``RUN: a 'gan' run folder, not <expected>``."""
        saved = self.read_config()
        if saved.get("kind") != kind:
            raise MnistgenError(f"{self.path}: a {saved.get('kind')!r} run folder, not {expected}")
        return from_dict(config_class, saved["config"])

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl (flushed and fsynced: an interrupted run keeps its history)."""
        if not is_main_process():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a") as handle:
            handle.write(json.dumps(_finite_or_none(record), default=_json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, epochs_done: int) -> None:
        """On resume, drop metric lines of epochs the checkpoint does not contain."""
        if is_main_process() and self.metrics.is_file():
            kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= epochs_done]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.metrics, lambda h: h.write(text), mode="w")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if is_main_process():
            save_checkpoint(self.checkpoint, state)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint, map_location)
