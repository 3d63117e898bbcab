"""The run folder: config, metrics, checkpoints and figures of one run, kept together.

Layout of a run folder ``RUN/``::

    RUN/config.json       the config dataclass as JSON, plus "mnistgen_version" and "environment"
    RUN/metrics.jsonl     one JSON object per epoch, appended as training goes
    RUN/checkpoint.pt     the latest state (weights, optimizers, RNG states, epoch), written atomically
    RUN/data.json         provenance of the data used (dataset, files, checksums, or the sample)
    RUN/figures/*.png     figures made by ``plot`` commands
    RUN/grids/epoch_NNN.png, .npy   a GAN run's 8x8 grids of G's images for its fixed noise, by epoch
    RUN/eval.json         results of ``eval``

All file writing of training goes through this module, and only the rank-0 process writes
(:func:`is_main_process`), so the loops can later run under torchrun unchanged.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import from_dict
from .errors import MnistgenError
from .files import atomic_write, json_line, read_json, save_figure, write_json
from .imaging import save_png, tile

GRID_SIDE = 8  # a GAN run's progress grids are 8x8 images
GRID_PNG_SCALE = 3  # grid PNGs are enlarged 3x (nearest) so a digit is 84 screen pixels
GRID_PADDING = 2


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialised torch.distributed job."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


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

    grids = property(lambda self: self.path / "grids")

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
            handle.write(json_line(record) + "\n")
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
            text = "".join(json_line(r) + "\n" for r in kept)
            atomic_write(self.metrics, lambda h: h.write(text), mode="w")

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

    # ------------------------------------------------------------------ a GAN run's grids

    def grid_paths(self, epoch: int) -> tuple[Path, Path]:
        """RUN/grids/epoch_NNN.png (the 8x8 picture) and .npy (its 64 images, float32 (64, 28, 28))."""
        stem = self.grids / f"epoch_{epoch:03d}"
        return stem.with_suffix(".png"), stem.with_suffix(".npy")

    def save_grid(self, epoch: int, images: np.ndarray) -> None:
        """The 64 images (64, 28, 28) in [0, 1] of epoch ``epoch``'s grid, as a picture and as an array (rank 0)."""
        if not is_main_process():
            return
        png, array = self.grid_paths(epoch)
        save_png(png, tile(images, GRID_SIDE, GRID_SIDE, padding=GRID_PADDING), scale=GRID_PNG_SCALE)
        atomic_write(array, lambda handle: np.save(handle, np.asarray(images, dtype=np.float32)))

    def grid_epochs(self) -> list[int]:
        """Epochs with a saved grid (its .npy), ascending."""
        epochs = []
        for path in self.grids.glob("epoch_*.npy"):
            number = path.stem.removeprefix("epoch_")
            if number.isdigit():
                epochs.append(int(number))
        return sorted(epochs)

    def load_grid(self, epoch: int) -> np.ndarray:
        """The 64 images of the grid saved at ``epoch``: (64, 28, 28) float32."""
        _, array = self.grid_paths(epoch)
        try:
            return np.load(array, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise MnistgenError(f"{array}: not a readable grid ({type(exc).__name__})") from None
