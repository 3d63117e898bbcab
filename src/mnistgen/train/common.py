"""What every training loop shares: RNG state for exact resume, the NaN guard, the progress bar.

Kept as small functions (no trainer class): each loop in ``train/`` reads top to bottom.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import MnistgenError

# glibc's mallopt parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW_BYTES = 32 * 2**20  # blocks up to 32 MiB come from the heap (glibc's largest allowed threshold)
_NEVER_TRIM_BYTES = 2**30  # free heap memory is given back to the system only beyond 1 GiB


def keep_freed_memory() -> bool:
    """Let this process keep and reuse the memory of freed tensors instead of returning it to the system.

    glibc's malloc serves blocks over its (dynamic) mmap threshold with fresh mappings and returns them on
    free, and trims the heap top; a training loop that allocates and frees the same few-MB tensors every
    step then page-faults them all back in each time (25-30% of a GAN step on a 2-core CPU,
    docs/BENCHMARKS.md). Fixed thresholds stop that; values and results are unchanged. Returns True if
    applied; a no-op returning False where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM_BYTES))


class NonFiniteLossError(MnistgenError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def check_finite(value: float, what: str, epoch: int, step: int) -> None:
    """Stop the run with a clear message if ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"{what} became {value} at epoch {epoch}, step {step}; stopped, the checkpoint of the "
            f"last completed epoch is kept (try a lower learning rate)"
        )


def generator_states(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """The states of named generators, for a checkpoint (plain uint8 tensors: weights_only-safe)."""
    return {name: g.get_state() for name, g in generators.items()}


def restore_generators(generators: dict[str, torch.Generator], states: dict[str, torch.Tensor]) -> None:
    for name, g in generators.items():
        g.set_state(states[name].to("cpu") if g.device.type == "cpu" else states[name])


def cpu_rng_state() -> dict[str, Any]:
    """The global torch RNG state (CPU and, when present, CUDA): draws not made through a generator."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress(total: int, description: str, enabled: bool | None = None) -> tqdm:
    """A progress bar on stderr; shown only on a terminal unless ``enabled`` says otherwise."""
    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, desc=description, unit="batch", leave=False, disable=disable,
                dynamic_ncols=True)


def stream_seed(seed: int, *keys: int) -> int:
    """A seed for one random stream of a run, independent of the others (NumPy's SeedSequence mixes the keys)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def synchronize_gradients(model: torch.nn.Module) -> None:
    """Average the gradients over the ranks of a torchrun job; nothing to do in a single process."""
    average_over_ranks([parameter.grad for parameter in model.parameters()])


def average_over_ranks(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks of a torchrun job; nothing to do in a single process."""
    rank, world_size = distributed_rank_and_size()
    if world_size == 1:
        return
    for tensor in tensors:
        torch.distributed.all_reduce(tensor)
        tensor.div_(world_size)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Use ``threads`` CPU threads inside the block (0: leave torch's setting alone)."""
    if threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def sigint_requests_stop() -> Iterator[Callable[[], bool]]:
    """Inside the block a first Ctrl-C only asks the loop to stop after the current step (it saves, then
    stops); a second one interrupts at once. Yields the function the loop polls."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set  # Python delivers signals to the main thread only: nothing to install here
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def refuse_changed_settings(run_path: Any, saved: Any, requested: Any, may_change: tuple[str, ...],
                            also_changed: tuple[str, ...] = ()) -> None:
    """``--resume`` continues the saved run: a one-line error naming every field of ``requested`` (a config
    dataclass) that differs from ``saved`` and is not in ``may_change`` (plus the names in ``also_changed``)."""
    differ = [f.name for f in dataclasses.fields(requested)
              if f.name not in may_change and getattr(saved, f.name) != getattr(requested, f.name)]
    differ += also_changed
    if differ:
        names = ", ".join("--" + name.replace("_", "-") for name in differ)
        raise MnistgenError(f"{run_path}: --resume must keep the run's settings; these differ from its config.json: "
                            f"{names}")
