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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..distributed import from_main_rank, rank_and_size
from ..errors import MnistgenError, NonFiniteLossError, TrainingInterrupted
from ..runs import RunDir, is_main_process, save_checkpoint

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


KEEP_THE_LAST_CHECKPOINT = "the checkpoint of the last completed epoch is kept"


def check_finite(value: float, what: str, epoch: int, step: int | None = None,
                 kept: str = KEEP_THE_LAST_CHECKPOINT) -> None:
    """Stop the run with a clear message if ``value`` is NaN or infinite; ``kept`` says what stays on disk."""
    if not math.isfinite(value):
        where = f"epoch {epoch}, step {step}" if step is not None else f"the end of epoch {epoch}"
        raise NonFiniteLossError(f"{what} became {value} at {where}; stopped, {kept} (try a lower learning rate)")


def say_on_main_process(line: str) -> None:
    """The default ``say`` of the loops: a note on stderr, from rank 0 only."""
    if is_main_process():
        print(line, file=sys.stderr)


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


def distributed_rank_and_size() -> tuple[int, int]:
    """(this process's rank, the number of processes) of a torchrun job; (0, 1) in one process."""
    return rank_and_size()


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


def check_run_folder(run: RunDir, resume: bool, kind: str, config: Any, may_change: tuple[str, ...],
                     say: Callable[[str], None] | None = None, metric_keys: tuple[str, ...] = ()
                     ) -> dict[str, Any] | None:
    """Decide, before anything is written, whether ``run`` starts anew or continues; returns the checkpoint to
    continue from, or None to start from epoch 1. A one-line :class:`MnistgenError` where neither fits.

    - A new run needs a folder without a checkpoint. A config.json without one is what a start that ended before
      its first checkpoint leaves (killed, disk full, NaN in epoch 1): it starts anew, with one note to ``say``.
    - ``--resume`` needs a run of ``kind``. Without a checkpoint yet it starts from epoch 1 (with one note);
      with one, every setting but the fields in ``may_change`` and the data's location (the dataset must stay)
      must equal those the checkpoint was written with: a config.json edited by hand is refused like a flag,
      and its metrics.jsonl must hold valid records (with the numbers ``metric_keys``).
    """
    say = say or say_on_main_process
    has_checkpoint = run.checkpoint.is_file()
    if not resume:
        if has_checkpoint:
            raise MnistgenError(f"{run.path} already holds a run: add --resume to continue it, or choose another --out")
        if run.config.is_file():
            say(f"mnistgen: note: {run.path}: an earlier start ended before its first checkpoint; starting anew")
        return None
    if not run.config.is_file():
        raise MnistgenError(f"{run.path}: nothing to resume (no run here); train without --resume first")
    run.read_config_as(kind, type(config), f"a {kind.upper()} run")
    if not has_checkpoint:
        say(f"mnistgen: note: {run.path}: no checkpoint yet (its first start ended before one); starting from "
            "epoch 1 with its settings")
        return None
    run.read_metrics(metric_keys, say=lambda line: None)  # a damaged line is refused now, before the data load
    checkpoint = run.load_checkpoint(map_location="cpu")
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise MnistgenError(f"{run.checkpoint}: not a checkpoint of a {kind.upper()} run (no config in it)")
    try:
        saved = from_dict(type(config), checkpoint["config"])
    except MnistgenError as exc:
        raise MnistgenError(f"{run.checkpoint}: its config is not a {kind.upper()} config ({exc})") from None
    differ = [f.name for f in dataclasses.fields(config)
              if f.name not in (*may_change, "data") and getattr(saved, f.name) != getattr(config, f.name)]
    if saved.data.dataset != config.data.dataset:
        differ.append("dataset")
    if differ:
        first = differ[0]
        then, now = (saved.data, config.data) if first == "dataset" else (saved, config)
        names = ", ".join("--" + name.replace("_", "-") for name in differ)
        raise MnistgenError(f"{run.path}: --resume must keep the settings the run was trained with; these differ from "
                            f"its checkpoint (a flag, or an edited config.json): {names} (--{first.replace('_', '-')} "
                            f"was {getattr(then, first)!r}, now {getattr(now, first)!r})")
    return checkpoint


def claim_run(held: ExitStack, run: RunDir, resume: bool, kind: str, config: Any, may_change: tuple[str, ...],
              say: Callable[[str], None] | None = None, metric_keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Hold ``run`` for this process until ``held`` closes (:meth:`RunDir.claimed`), then :func:`check_run_folder`.

    Under torchrun rank 0 alone does both: it holds the lock and reads the folder, and every rank receives its answer
    (the checkpoint to continue from, or its one-line error: all ranks stop). This is also the barrier after which
    rank 0 writes: no rank reads the folder after it."""

    def on_rank_0() -> dict[str, Any] | None:
        held.enter_context(run.claimed())
        return check_run_folder(run, resume, kind, config, may_change, say, metric_keys)

    return from_main_rank(on_rank_0)


def epochs_left(run: RunDir, config: Any, epochs_done: int, start_step: int,
                say: Callable[[str], None] | None = None) -> bool:
    """After a restore: whether ``config.epochs`` leaves epochs to train (False, with one note, when the run is
    complete); fewer epochs than are done already is a one-line error."""
    partly_done = epochs_done + (start_step > 0)
    if config.epochs < partly_done:
        raise MnistgenError(f"{run.path}: {epochs_done} epochs are done already; give --epochs of at least "
                            f"{partly_done} to continue")
    if config.epochs == epochs_done and start_step == 0:
        (say or say_on_main_process)(f"mnistgen: note: {run.path}: all {epochs_done} epochs are done; nothing left "
                                     "to do (give a larger --epochs with --resume to train further)")
        return False
    return True


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's memory layout.

    A checkpoint keeps each tensor's layout, and the parameters' layout depends on the accelerator (channels-last
    weights on CPU, say); PyTorch's fused Adam walks parameter, gradient and moments in memory order, so moments
    in another layout than their parameter would be mixed up element by element, silently."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter).copy_(value)


def non_finite_entry(states: dict[str, Any]) -> str | None:
    """The first tensor in the (nested) state dicts ``states`` with a NaN or an infinity, as "key name", or None."""
    tensors: list[tuple[str, torch.Tensor]] = []

    def collect(prefix: str, value: Any) -> None:
        if torch.is_tensor(value):
            if value.is_floating_point():
                tensors.append((prefix, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                collect(f"{prefix}.{index}", item)

    collect("", states)
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in tensors]).cpu()  # one device read
    bad = torch.nonzero(~finite)
    return tensors[int(bad[0])][0] if len(bad) else None


def describe_position(epoch: int, step: int) -> str:
    """Where a checkpoint stands: "after epoch 3", or "in epoch 4 after step 120"."""
    return f"after epoch {epoch}" if step == 0 else f"in epoch {epoch + 1} after step {step}"


@dataclass
class RunState:
    """What a run's checkpoint holds besides its position: the objects with a ``state_dict`` (models and
    optimizers) under their checkpoint keys, the random generators (the batch order's under "order"), the
    config, and the key of the per-step values (the ELBOs, the losses) of a partly done epoch. ``kept`` says
    what RUN/checkpoint.pt holds now, for the messages of a run that stops."""

    run: RunDir
    config: Any
    stateful: dict[str, Any]
    generators: dict[str, torch.Generator]
    values_key: str
    kept: str = "nothing was saved (the run had no checkpoint yet)"
    checkpoint_path: Path | None = None  # where save() writes (default RUN/checkpoint.pt; a replica's pending file)

    def save(self, *, epoch: int, step: int, order_state: torch.Tensor, step_values: torch.Tensor,
             seconds: float) -> None:
        """RUN/checkpoint.pt, atomically (rank 0): ``epoch`` epochs and ``step`` steps of the next one done;
        ``order_state``: the state the next epoch's batch order is drawn from.

        Never writes a NaN or an infinity: a weight or an optimizer state (Adam's moments) that is not finite
        stops the run with :class:`NonFiniteLossError`, and the checkpoint on disk stays as it was."""
        states = {key: value.state_dict() for key, value in self.stateful.items()}
        bad = non_finite_entry(states)
        if bad is not None:
            raise NonFiniteLossError(f"{bad} became NaN or infinite in epoch {epoch + (step > 0)}; stopped, "
                                     f"{self.kept} (try a lower learning rate)")
        state = {
            **states,
            "generators": generator_states(self.generators),
            "order_state": order_state,
            "epoch": epoch,  # epochs completed
            "step": step,  # steps completed of epoch ``epoch + 1`` (0 between epochs)
            self.values_key: step_values[:step].cpu(),
            "seconds": seconds,  # training seconds spent so far in epoch ``epoch + 1``
            "config": to_dict(self.config),
        }
        path = self.checkpoint_path or self.run.checkpoint
        if self.checkpoint_path is None:
            self.run.save_checkpoint(state)
        elif is_main_process():
            save_checkpoint(path, state)
        self.kept = f"{path} keeps the state {describe_position(epoch, step)}"

    def restore(self, checkpoint: dict[str, Any]) -> tuple[int, int, torch.Tensor, float]:
        """Load ``checkpoint`` (from :func:`check_run_folder`) into the objects and generators; returns (epochs
        done, steps done of the next epoch, those steps' values, seconds spent in them). A checkpoint that does not
        fit (keys, shapes, types) is a one-line :class:`MnistgenError`; the run stops before writing anything."""
        try:
            epoch, step = checkpoint["epoch"], checkpoint["step"]
            values, seconds = checkpoint[self.values_key], checkpoint["seconds"]
            if not (isinstance(epoch, int) and isinstance(step, int) and epoch >= 0 and step >= 0
                    and torch.is_tensor(values) and len(values) == step and isinstance(seconds, int | float)):
                raise ValueError("its position (epoch, step, the step values, seconds) is inconsistent")
            for key, value in self.stateful.items():
                value.load_state_dict(checkpoint[key])
                if isinstance(value, torch.optim.Optimizer):
                    match_state_layouts(value)
            restore_generators(self.generators, checkpoint["generators"])
            self.generators["order"].set_state(checkpoint["order_state"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            problem = f"no {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:300]
            raise MnistgenError(f"{self.run.checkpoint} does not fit this run's models: {problem}") from None
        self.kept = f"{self.run.checkpoint} keeps the state {describe_position(epoch, step)}"
        return epoch, step, values, float(seconds)


def end_steps(state: RunState, *, epoch: int, done: int, steps: int, step_values: torch.Tensor,
              value_names: tuple[str, ...], order_state: torch.Tensor, seconds: float, command: str) -> torch.Tensor:
    """The first half of the end of epoch ``epoch`` (0-based), after its steps:

    1. the NaN guard: the values of the ``done`` steps (``step_values``, (steps, len(value_names)) or (steps,),
       read from the device here, once per epoch) must be finite, else :class:`NonFiniteLossError` and nothing
       is saved: the checkpoint on disk stays;
    2. if ``done < steps`` (Ctrl-C): save the position inside the epoch (if the weights and optimizer states are
       finite, see :meth:`RunState.save`) and raise :class:`TrainingInterrupted` (its message ends with the
       ``command`` that continues the run).

    Returns the values, (done, len(value_names)) on the CPU. :func:`record_epoch` is the second half.
    """
    values = step_values[:done].cpu().reshape(done, len(value_names))
    bad = torch.nonzero(~torch.isfinite(values))
    if len(bad):
        step, column = int(bad[0, 0]), int(bad[0, 1])
        check_finite(float(values[step, column]), value_names[column], epoch + 1, step + 1, state.kept)
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
            check_finite(value, key, record["epoch"], kept=state.kept)
    state.run.append_metrics(record)
    state.save(epoch=record["epoch"], step=0, order_state=state.generators["order"].get_state(),
               step_values=torch.zeros(0), seconds=0.0)
    return record


SUBNORMAL_PROBE = 1e-41  # a float32 subnormal: products of it stay subnormal unless the CPU flushes them


def subnormals_flushed() -> bool:
    """Whether the CPU threads of torch's matrix products and elementwise kernels flush subnormal floats to zero:
    a product of subnormals is exactly 0 where they are flushed, a subnormal elsewhere. The sizes are those of the
    VAE's decoder product and of kernels that torch splits over its threads."""
    product = torch.full((512, 784), SUBNORMAL_PROBE) @ torch.ones(784, 512)
    elementwise = torch.full((1 << 18,), SUBNORMAL_PROBE) * 1.0
    return int(torch.count_nonzero(product)) == 0 and int(torch.count_nonzero(elementwise)) == 0


@contextmanager
def flushed_denormals(flush: bool, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """With ``flush``, the CPU flushes subnormal floats to zero inside the block (``torch.set_flush_denormal``:
    x86's FTZ and DAZ modes) and the calling thread returns to IEEE arithmetic after it.

    The mode belongs to each thread: threads torch starts inside the block (its CPU pool, started at its first
    parallel work or ``torch.set_num_threads``) inherit it, and may keep it after the block. Whether threads started
    before follow depends on the thread library, so the block checks them (:func:`subnormals_flushed`); where some
    keep IEEE arithmetic, or the CPU has no such mode, ``say`` gets a one-line note. The results are the same either
    way; only the speed differs.
    """
    if not flush:
        yield
        return
    say = say or say_on_main_process
    if not torch.set_flush_denormal(True):
        say("mnistgen: note: this CPU cannot flush subnormal floats to zero; --flush-denormals has no effect")
        yield
        return
    if not subnormals_flushed():
        say("mnistgen: note: --flush-denormals reaches only the threads torch starts after it: some of its CPU "
            "threads started before and keep IEEE arithmetic (same results, less speed-up)")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextmanager
def training_context(threads: int, stop: Callable[[], bool] | None, flush_denormals: bool = False,
                     say: Callable[[str], None] | None = None) -> Iterator[Callable[[], bool]]:
    """``threads`` CPU threads (0: torch's default), subnormals flushed to zero with ``flush_denormals`` (see
    :func:`flushed_denormals`), and the stop request the loop polls: ``stop`` if given, else Ctrl-C (see
    :func:`sigint_requests_stop`)."""
    with flushed_denormals(flush_denormals, say), torch_threads(threads):  # flushing first: new threads inherit it
        if stop is not None:
            yield stop
        else:
            with sigint_requests_stop() as requested:
                yield requested
