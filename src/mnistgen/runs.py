"""The run folder ``RUN/``: config.json (the config, the version, the environment), metrics.jsonl (one line per
epoch), checkpoint.pt, data.json (the data's provenance), figures/, a GAN run's grids/ (grids/raw/ with
``--ema-decay``) and eval.json. All file writing of training goes through this module, on rank 0 alone."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import GANConfig, VAEConfig, from_dict, replica_seeds
from .distributed import is_main_process
from .errors import MnistgenError
from .files import atomic_write, json_line, read_json, remove_temporaries, save_figure, to_stderr, write_json
from .imaging import save_png, tile
from .version import __version__

GRID_SIDE = 8  # a GAN run's progress grids are 8x8 images
GRID_PNG_SCALE = 3  # grid PNGs are enlarged 3x (nearest) so a digit is 84 screen pixels
GRID_PADDING = 2
SEED_FOLDER_PREFIX = "seed="  # a replica run's sub-folder of one seed: RUN/seed=1234
_CONFIG_CLASSES = {"vae": VAEConfig, "gan": GANConfig}  # the kinds of run that may hold replicas


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a dict of tensors and plain values (``weights_only``-loadable), serialized in memory first."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write(path, lambda handle: handle.write(data))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); a missing or corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MnistgenError(f"{path}: no checkpoint here (train first, or check the run folder)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise MnistgenError(f"{path}: not a readable checkpoint ({type(exc).__name__}); restore it from a copy, or "
                            "delete it and train the run again (from epoch 1)") from None


TEXT_METRICS = ("trained_by", "train_elbo_is")  # the values of metrics.jsonl that are text; the others are numbers


def parse_metrics(text: str, path: Path, required: tuple[str, ...] = (),
                  say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl text (each line as :func:`_metrics_problem` checks it). A damaged last line is
    what a crash in the middle of an append leaves: dropped with one note to ``say``; one before it is an error."""
    lines = [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        problem = _metrics_problem(line, required)
        if problem is None:
            records.append(json.loads(line))
        elif index == len(lines) - 1:
            (say or to_stderr)(f"mnistgen: note: {path}, line {number}: {problem} (the end of an interrupted write); "
                             "ignored")
        else:
            raise MnistgenError(f"{path}, line {number}: {problem}")
    return records


def _metrics_problem(line: str, required: tuple[str, ...]) -> str | None:
    """Why a metrics.jsonl line is not a valid record, or None."""
    try:
        line.encode()  # a byte that is not UTF-8 was read as a lone surrogate
    except UnicodeEncodeError:
        return "not UTF-8 text"
    try:
        record = json.loads(line, parse_constant=lambda name: name)  # NaN and Infinity stay text: refused below
    except (ValueError, RecursionError):
        return "not a complete JSON line"
    if not isinstance(record, dict):
        return "not a JSON object"
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return f"its epoch is {epoch!r}, not a whole number of at least 1"
    for key, value in record.items():
        if key in TEXT_METRICS:
            if not isinstance(value, str):
                return f"{key!r} is {value!r}, not text"
        elif value is None and key not in required:
            continue
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key!r} is {value!r}, not a finite number"
    missing = [key for key in required if key not in record]
    if missing:
        return f"no {', '.join(repr(key) for key in missing)}"
    return None


PENDING_CHECKPOINT = "checkpoint.next.pt"  # a replica's state written, not yet committed (see mnistgen.train.common)
RUN_FILES = ("checkpoint.pt", "config.json", "metrics.jsonl", "data.json", "eval.json", "replicas.json",
             PENDING_CHECKPOINT)  # written by replacing()


def _lock_exclusively(lock: Path, folder: Path) -> int:
    """The lock file's descriptor, ``flock``-ed without waiting, or a one-line refusal (no ``fcntl``: a note)."""
    try:
        import fcntl
    except ImportError:  # Windows
        to_stderr(f"mnistgen: note: {folder} is not locked against a second process on this platform")
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    while True:
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise MnistgenError(f"{folder}: cannot write here ({exc.strerror or exc})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(descriptor)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise MnistgenError(f"{lock}: cannot lock it ({exc.strerror or exc})") from None
            try:
                pid = lock.read_text().strip()
            except OSError:
                pid = ""
            holder = f" (pid {pid})" if pid.isdigit() else ""
            raise MnistgenError(f"{folder} is in use by another mnistgen process{holder}; wait for it to end, "
                                "or choose another --out") from None
        try:
            same_file = os.stat(lock).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # not a lock file that its last holder removed between our open and our flock
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            return descriptor
        os.close(descriptor)


def environment() -> dict[str, Any]:
    """Versions and machine: saved with every run so a number can be traced to what produced it."""
    return {
        "mnistgen": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


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

    grids = property(lambda self: self.path / "grids")
    lock = property(lambda self: self.path / ".lock")
    replicas_commit = property(lambda self: self.path / "replicas.json")  # a replica run's last saved position

    def seed_run(self, seed: int) -> RunDir:
        """The single-seed run folder of one replica of a replica run: RUN/seed=N."""
        return RunDir(self.path / f"{SEED_FOLDER_PREFIX}{seed}")

    def replicas(self) -> list[tuple[int, RunDir]]:
        """A replica run's seeds and their run folders (RUN/seed=N), in the order of its config's seeds; an empty
        list for a single-seed run. Reads config.json (a one-line error if it is not a run's)."""
        saved = self.read_config()
        values = saved["config"]
        if values.get("seeds") is None and values.get("replicas", 1) == 1:
            return []
        config_class = _CONFIG_CLASSES.get(saved.get("kind"))
        if config_class is None:
            raise MnistgenError(f"{self.config}: a {saved.get('kind')!r} run cannot hold replicas")
        return [(seed, self.seed_run(seed)) for seed in replica_seeds(self._config_as(config_class, values))]

    def require(self) -> RunDir:
        if not self.config.is_file():
            raise MnistgenError(f"{self.path}: not a run folder (no config.json)")
        return self

    def write_config(self, config_dict: dict[str, Any], kind: str) -> None:
        if is_main_process():
            write_json(self.config, {"kind": kind, "mnistgen_version": __version__,
                                     "environment": environment(), "config": config_dict})

    def read_config(self) -> dict[str, Any]:
        saved = read_json(self.require().config)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict) or not isinstance(
                saved.get("environment", {}), dict):
            raise MnistgenError(f"{self.config}: not a run's config (a JSON object with \"kind\" and a \"config\" "
                                "object)")
        return saved

    def read_config_as(self, kind: str, config_class: type, expected: str) -> Any:
        saved = self.read_config()
        if saved.get("kind") != kind:
            raise MnistgenError(f"{self.path}: a {saved.get('kind')!r} run folder, not {expected}")
        return self._config_as(config_class, saved["config"])

    def read_config_to_resume(self, kind: str, config_class: type) -> Any:
        """The stored config that ``--resume`` continues; without one, a one-line error saying what to run instead."""
        if not self.config.is_file():
            raise MnistgenError(f"{self.path}: not a run folder (no config.json), nothing to resume; start the run "
                                f"with `mnistgen {kind} train --out {self.path}`, without --resume")
        return self.read_config_as(kind, config_class, f"a {kind.upper()} run")

    def _config_as(self, config_class: type, values: dict[str, Any]) -> Any:
        try:
            return from_dict(config_class, values)
        except MnistgenError as exc:
            raise MnistgenError(f"{self.config}: {exc}") from None

    def append_metrics(self, *records: dict[str, Any]) -> None:
        """Append one line per record to metrics.jsonl (flushed and fsynced: an interrupted run keeps its history)."""
        if not is_main_process():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.metrics, "a") as handle:
                handle.write("".join(json_line(record) + "\n" for record in records))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise MnistgenError(f"cannot write {self.metrics}: {exc.strerror or exc}") from None

    def read_metrics(self, required: tuple[str, ...] = (), say: Callable[[str], None] | None = None
                     ) -> list[dict[str, Any]]:
        """The records of metrics.jsonl (see :func:`parse_metrics`); [] when there is none yet."""
        if not self.metrics.is_file():
            return []
        try:
            text = self.metrics.read_bytes().decode("utf-8", "surrogateescape")  # each line's bytes checked alone
        except OSError as exc:
            raise MnistgenError(f"{self.metrics}: not readable ({exc})") from None
        return parse_metrics(text, self.metrics, required, say)

    def truncate_metrics(self, epochs_done: int, say: Callable[[str], None] | None = None) -> None:
        """Drop the metric lines of epochs the checkpoint does not hold (and a partial last line); on a new start
        (``epochs_done`` 0), whatever an earlier start left, unread."""
        if is_main_process() and self.metrics.is_file():
            kept = [r for r in self.read_metrics(say=say) if r["epoch"] <= epochs_done] if epochs_done else []
            text = "".join(json_line(r) + "\n" for r in kept)
            atomic_write(self.metrics, lambda h: h.write(text), mode="w")

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the run folder inside the block (rank 0: an exclusive ``flock`` on RUN/.lock), after removing what
        killed writers left in RUN and RUN/seed=N; a folder created here and left empty is removed."""
        if not is_main_process():
            yield
            return
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MnistgenError(f"{self.path}: cannot create the run folder ({exc.strerror or exc})") from None
        descriptor = _lock_exclusively(self.lock, self.path)
        try:
            for folder in (self.path, *self.path.glob(f"{SEED_FOLDER_PREFIX}*")):  # a replica run's seeds too
                remove_temporaries(folder, RUN_FILES)
            yield
        finally:
            if created and [p.name for p in self.path.iterdir()] == [self.lock.name]:
                self.lock.unlink(missing_ok=True)
                self.path.rmdir()
            os.close(descriptor)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if is_main_process():
            save_checkpoint(self.checkpoint, state)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint, map_location)

    def save_figures(self, figures: dict[str, Any]) -> list[Path]:
        """Each matplotlib figure as RUN/figures/<name>.png (rank 0 writes); returns the paths."""
        paths = [self.figures / f"{name}.png" for name in figures]
        if is_main_process():
            for path, figure in zip(paths, figures.values(), strict=True):
                save_figure(path, figure)
        return paths

    def grid_paths(self, epoch: int, raw: bool = False) -> tuple[Path, Path]:
        """RUN/grids[/raw]/epoch_NNN.png (the 8x8 picture) and .npy (its 64 images, float32 (64, 28, 28))."""
        stem = (self.grids / "raw" if raw else self.grids) / f"epoch_{epoch:03d}"
        return stem.with_suffix(".png"), stem.with_suffix(".npy")

    def save_grid(self, epoch: int, images: np.ndarray, raw: bool = False) -> None:
        """The 64 images (64, 28, 28) in [0, 1] of epoch ``epoch``'s grid, as a picture and as an array (rank 0)."""
        if not is_main_process():
            return
        png, array = self.grid_paths(epoch, raw)
        save_png(png, tile(images, GRID_SIDE, GRID_SIDE, padding=GRID_PADDING), scale=GRID_PNG_SCALE)
        atomic_write(array, lambda handle: np.save(handle, np.asarray(images, dtype=np.float32)))

    def grid_epochs(self, raw: bool = False) -> list[int]:
        """Epochs with a saved grid (its .npy), ascending."""
        folder = self.grids / "raw" if raw else self.grids
        numbers = [path.stem.removeprefix("epoch_") for path in folder.glob("epoch_*.npy")]
        return sorted(int(number) for number in numbers if number.isdigit())

    def load_grid(self, epoch: int, raw: bool = False) -> np.ndarray:
        _, array = self.grid_paths(epoch, raw)
        try:
            return np.load(array, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise MnistgenError(f"{array}: not a readable grid ({type(exc).__name__})") from None
