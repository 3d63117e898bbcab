"""What the VAE's and the GAN's training loops share: the new-or-resume check, the checkpoint writer and reader,
the end-of-epoch sequence (NaN guard, interrupt, metrics, save), Ctrl-C, threads, the progress bar, random
streams and the gradient average over torchrun ranks.

Kept as small functions and one small record (:class:`RunState`), no trainer class: each loop in ``train/``
reads top to bottom and calls these where it needs them.
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import to_dict
from ..errors import MnistgenError
from ..runs import RunDir

# glibc's mallopt parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW_BYTES = 32 * 2**20  # blocks up to 32 MiB come from the heap (glibc's largest allowed threshold)
_NEVER_TRIM_BYTES = 2**30  # free heap memory is given back to the system only beyond 1 GiB


def keep_freed_memory() -> bool:
    """Let this process keep and reuse the memory of freed tensors instead of returning it to the system.

    glibc's malloc serves blocks over its (dynamic) mmap threshold with fresh mappings and returns them on
    free, and trims the heap top; a training loop that allocates and frees the same few-MB tensors every
    step then page-faults them all back in each time. Fixed thresholds stop that; values and results are
    unchanged. Returns True if applied; a no-op returning False where the C library is not glibc (macOS,
    Windows, musl).
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
    """A loss or an evaluation became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a completed step; the state was saved. ``str()`` says how to continue."""


def check_finite(value: float, what: str, epoch: int, step: int | None = None) -> None:
    """Stop the run with a clear message if ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        where = f"epoch {epoch}, step {step}" if step is not None else f"the end of epoch {epoch}"
        raise NonFiniteLossError(
            f"{what} became {value} at {where}; stopped, the checkpoint of the last completed epoch is kept "
            "(try a lower learning rate)"
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


# --------------------------------------------------------------------------- the run: new or resumed, checkpoints


def check_run_folder(run: RunDir, resume: bool, kind: str, config: Any, may_change: tuple[str, ...]) -> None:
    """A new run needs a folder without a run in it; ``--resume`` needs a run of ``kind`` with a checkpoint and
    the same settings, but for the fields in ``may_change`` and the data's location (the dataset must stay).
    Called before anything is written; a one-line :class:`MnistgenError` otherwise."""
    if not resume:
        if run.config.is_file() or run.checkpoint.is_file():
            raise MnistgenError(f"{run.path} already holds a run: add --resume to continue it, or choose another --out")
        return
    if not run.checkpoint.is_file():
        raise MnistgenError(f"{run.path}: nothing to resume (no checkpoint.pt); train without --resume first")
    saved = run.read_config_as(kind, type(config), f"a {kind.upper()} run")
    differ = [f.name for f in dataclasses.fields(config)
              if f.name not in (*may_change, "data") and getattr(saved, f.name) != getattr(config, f.name)]
    if saved.data.dataset != config.data.dataset:
        differ.append("dataset")
    if differ:
        names = ", ".join("--" + name.replace("_", "-") for name in differ)
        raise MnistgenError(f"{run.path}: --resume must keep the run's settings; these differ from its config.json: "
                            f"{names}")


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's memory layout.

    A checkpoint keeps each tensor's layout, and the parameters' layout depends on the accelerator (channels-last
    weights on CPU, say); PyTorch's fused Adam walks parameter, gradient and moments in memory order, so moments
    in another layout than their parameter would be mixed up element by element, silently."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter).copy_(value)


@dataclass
class RunState:
    """What a run's checkpoint holds besides its position: the objects with a ``state_dict`` (models and
    optimizers) under their checkpoint keys, the random generators (the batch order's under "order"), the
    config, and the key of the per-step values (the ELBOs, the losses) of a partly done epoch."""

    run: RunDir
    config: Any
    stateful: dict[str, Any]
    generators: dict[str, torch.Generator]
    values_key: str

    def save(self, *, epoch: int, step: int, order_state: torch.Tensor, step_values: torch.Tensor,
             seconds: float) -> None:
        """RUN/checkpoint.pt, atomically (rank 0): ``epoch`` epochs and ``step`` steps of the next one done;
        ``order_state``: the state the next epoch's batch order is drawn from."""
        self.run.save_checkpoint({
            **{key: value.state_dict() for key, value in self.stateful.items()},
            "generators": generator_states(self.generators),
            "order_state": order_state,
            "epoch": epoch,  # epochs completed
            "step": step,  # steps completed of epoch ``epoch + 1`` (0 between epochs)
            self.values_key: step_values[:step].cpu(),
            "seconds": seconds,  # training seconds spent so far in epoch ``epoch + 1``
            "config": to_dict(self.config),
        })

    def restore(self) -> tuple[int, int, torch.Tensor, float]:
        """Load the checkpoint into the objects and generators; returns (epochs done, steps done of the next
        epoch, those steps' values, seconds spent in them)."""
        state = self.run.load_checkpoint(map_location="cpu")
        for key, value in self.stateful.items():
            value.load_state_dict(state[key])
            if isinstance(value, torch.optim.Optimizer):
                match_state_layouts(value)
        restore_generators(self.generators, state["generators"])
        self.generators["order"].set_state(state["order_state"])
        return int(state["epoch"]), int(state["step"]), state[self.values_key], float(state["seconds"])


def end_steps(state: RunState, *, epoch: int, done: int, steps: int, step_values: torch.Tensor,
              value_names: tuple[str, ...], order_state: torch.Tensor, seconds: float, command: str) -> torch.Tensor:
    """The first half of the end of epoch ``epoch`` (0-based), after its steps:

    1. the NaN guard: the values of the ``done`` steps (``step_values``, (steps, len(value_names)) or (steps,),
       read from the device here, once per epoch) must be finite, else :class:`NonFiniteLossError` and nothing
       is saved: the checkpoint of the last completed epoch stays;
    2. if ``done < steps`` (Ctrl-C): save the position inside the epoch and raise :class:`TrainingInterrupted`
       (its message ends with the ``command`` that continues the run).

    Returns the values, (done, len(value_names)) on the CPU. :func:`record_epoch` is the second half.
    """
    values = step_values[:done].cpu().reshape(done, len(value_names))
    bad = torch.nonzero(~torch.isfinite(values))
    if len(bad):
        step, column = int(bad[0, 0]), int(bad[0, 1])
        check_finite(float(values[step, column]), value_names[column], epoch + 1, step + 1)
    if done < steps:
        state.save(epoch=epoch, step=done, order_state=order_state, step_values=step_values, seconds=seconds)
        raise TrainingInterrupted(f"interrupted in epoch {epoch + 1} after step {done} of {steps}; saved "
                                  f"{state.run.checkpoint}; continue with: {command} --out {state.run.path} --resume")
    return values


def record_epoch(state: RunState, record: dict[str, Any]) -> dict[str, Any]:
    """The second half of the end of an epoch: every number of its ``record`` (the epoch's metrics, "epoch" being
    the number of epochs completed) must be finite (an evaluation may fail too), the record is appended to
    RUN/metrics.jsonl, and the checkpoint of the completed epoch is saved. Returns the record."""
    for key, value in record.items():
        if isinstance(value, float):
            check_finite(value, key, record["epoch"])
    state.run.append_metrics(record)
    state.save(epoch=record["epoch"], step=0, order_state=state.generators["order"].get_state(),
               step_values=torch.zeros(0), seconds=0.0)
    return record


@contextmanager
def training_context(threads: int, stop: Callable[[], bool] | None) -> Iterator[Callable[[], bool]]:
    """``threads`` CPU threads (0: torch's default), and the stop request the loop polls: ``stop`` if given,
    else Ctrl-C (see :func:`sigint_requests_stop`)."""
    with torch_threads(threads):
        if stop is not None:
            yield stop
        else:
            with sigint_requests_stop() as requested:
                yield requested
