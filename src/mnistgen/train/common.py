"""What the VAE's and the GAN's training loops share: the new-or-resume check, the checkpoint writer and reader,
the run folders of R replicas (:class:`ReplicaRuns`) with their end-of-epoch sequence (NaN guard, interrupt,
metrics, save), Ctrl-C, threads and subnormal floats. No trainer class: each loop in ``train/`` reads top to bottom
and calls these where it needs them. Replica folders and their committed checkpoints, random streams and resume,
torchrun: docs/SCALING.md and docs/TRAINING.md."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import fixed_settings_changed, from_dict, is_replicated, replica_config, replica_seeds, to_dict, validate
from ..device import resolve_device
from ..distributed import check_device, check_global_batch, from_main_rank, is_main_process, rank_and_size, ranks_agree
from ..errors import MnistgenError, NonFiniteLossError, TrainingInterrupted
from ..files import read_json, sync_folder, write_json
from ..runs import PENDING_CHECKPOINT, RunDir, load_checkpoint, save_checkpoint

# glibc's mallopt parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW_BYTES = 32 * 2**20  # blocks up to 32 MiB come from the heap (glibc's largest allowed threshold)
_NEVER_TRIM_BYTES = 2**30  # free heap memory is given back to the system only beyond 1 GiB


def keep_freed_memory() -> bool:
    """Let this process reuse the memory of freed tensors rather than page-fault the same few-MB blocks back in every
    step (glibc's malloc maps large blocks afresh and trims the heap; fixed thresholds stop it). Whether applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM_BYTES))


def check_finite(value: float, what: str, epoch: int, step: int | None = None,
                 kept: str = "the checkpoint of the last completed epoch is kept") -> None:
    """Stop the run with a clear message if ``value`` is NaN or infinite; ``kept`` says what stays on disk."""
    if not math.isfinite(value):
        where = f"epoch {epoch}, step {step}" if step is not None else f"the end of epoch {epoch}"
        raise NonFiniteLossError(f"{what} became {value} at {where}; stopped, {kept} (try a lower learning rate)")


def say_on_main_process(line: str) -> None:
    """The default ``say`` of the loops: a note on stderr, from rank 0 only."""
    if is_main_process():
        print(line, file=sys.stderr)


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


# --------------------------------------------------------------------------- the run: new or resumed, checkpoints


def check_run_folder(run: RunDir, resume: bool, kind: str, config: Any, say: Callable[[str], None] | None = None,
                     metric_keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Decide, before anything is written, whether ``run`` starts anew (None) or continues (the checkpoint); a
    one-line :class:`MnistgenError` where neither fits. On ``--resume`` every setting but the resumable ones and the
    data's location must equal the checkpoint's, and metrics.jsonl must hold valid records (with ``metric_keys``)."""
    say = say or say_on_main_process
    has_checkpoint = run.checkpoint.is_file()
    if not resume:
        if has_checkpoint:
            raise MnistgenError(f"{run.path} already holds a run: add --resume to continue it, or choose another --out")
        if run.config.is_file():
            say(f"mnistgen: note: {run.path}: an earlier start ended before its first checkpoint; starting anew")
        return None
    run.read_config_to_resume(kind, type(config))
    if not has_checkpoint:
        say(f"mnistgen: note: {run.path}: no checkpoint yet (its first start ended before one); starting from "
            "epoch 1 with its settings")
        return None
    checkpoint = run.load_checkpoint(map_location="cpu")
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise MnistgenError(f"{run.checkpoint}: not a checkpoint of a {kind.upper()} run (no config in it)")
    try:
        saved = from_dict(type(config), checkpoint["config"])
    except MnistgenError as exc:
        raise MnistgenError(f"{run.checkpoint}: its config is not a {kind.upper()} config ({exc})") from None
    differ = fixed_settings_changed(saved, config)
    if differ:
        (first, then, now), names = differ[0], ", ".join("--" + name.replace("_", "-") for name, _, _ in differ)
        raise MnistgenError(f"{run.path}: --resume must keep the settings the run was trained with; these differ from "
                            f"its checkpoint (a flag, or an edited config.json): {names} (--{first.replace('_', '-')} "
                            f"was {then!r}, now {now!r})")
    run.read_metrics(metric_keys, say=lambda line: None)  # a damaged line is refused now, before the data load
    return checkpoint


def match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's memory layout, which may differ from
    the checkpoint's (channels-last weights); fused Adam walks them in memory order and would mix them up silently."""
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter).copy_(value)


def non_finite_entry(states: dict[str, Any]) -> str | None:
    """The first tensor in the (nested) state dicts ``states`` with a NaN or an infinity, as "key name", or None."""
    tensors: list[tuple[str, torch.Tensor]] = []

    def collect(prefix: str, value: Any) -> None:
        if torch.is_tensor(value):
            if value.is_floating_point() and value.numel():
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
    # a NaN or an infinity is the smallest or the largest value (NaN propagates): one pass, nothing allocated
    extremes = torch.stack([torch.stack(torch.aminmax(tensor.detach())) for _, tensor in tensors])  # (n, 2)
    finite = torch.isfinite(extremes).all(dim=1).cpu()  # one device read
    bad = torch.nonzero(~finite)
    return tensors[int(bad[0])][0] if len(bad) else None


def describe_position(epoch: int, step: int) -> str:
    """Where a checkpoint stands: "after epoch 3", or "in epoch 4 after step 120"."""
    return f"after epoch {epoch}" if step == 0 else f"in epoch {epoch + 1} after step {step}"


@dataclass
class RunState:
    """What a run's checkpoint holds besides its position: objects with a ``state_dict``, the random generators (the
    batch order's: "order"), the config, the key of the step values; ``kept``: what RUN/checkpoint.pt holds now."""

    run: RunDir
    config: Any
    stateful: dict[str, Any]
    generators: dict[str, torch.Generator]
    values_key: str
    kept: str = "nothing was saved (the run had no checkpoint yet)"
    checkpoint_path: Path | None = None  # where save() writes (default RUN/checkpoint.pt; a replica's pending file)

    def save(self, *, epoch: int, step: int, order_state: torch.Tensor, step_values: torch.Tensor,
             seconds: float) -> None:
        """RUN/checkpoint.pt, atomically (rank 0): ``epoch`` epochs and ``step`` steps of the next one done. A weight or
        optimizer state that is not finite raises :class:`NonFiniteLossError` instead; the file on disk stays."""
        states = {key: value.state_dict() for key, value in self.stateful.items()}
        bad = non_finite_entry(states)
        if bad is not None:
            raise NonFiniteLossError(f"{bad} became NaN or infinite in epoch {epoch + (step > 0)}; stopped, "
                                     f"{self.kept} (try a lower learning rate)")
        state = {
            **states,
            "generators": {name: g.get_state() for name, g in self.generators.items()},  # uint8: weights_only-safe
            "order_state": order_state,
            "epoch": epoch,  # epochs completed
            "step": step,  # steps completed of epoch ``epoch + 1`` (0 between epochs)
            self.values_key: step_values[:step].cpu(),
            "seconds": seconds,  # training seconds spent so far in epoch ``epoch + 1``
            "config": to_dict(self.config),
        }
        path = self.checkpoint_path or self.run.checkpoint
        if is_main_process():
            save_checkpoint(path, state)
        self.kept = f"{path} keeps the state {describe_position(epoch, step)}"

    def restore(self, checkpoint: dict[str, Any]) -> tuple[int, int, torch.Tensor, float]:
        """Load ``checkpoint`` into the objects and generators; returns (epochs done, steps done of the next epoch,
        those steps' values, seconds spent in them). One that does not fit is a one-line :class:`MnistgenError`."""
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
            for name, g in self.generators.items():
                g.set_state(checkpoint["generators"][name])  # loaded on the CPU, where set_state wants it
            self.generators["order"].set_state(checkpoint["order_state"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            problem = f"no {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:300]
            raise MnistgenError(f"{self.run.checkpoint} does not fit this run's models: {problem}") from None
        self.kept = f"{self.run.checkpoint} keeps the state {describe_position(epoch, step)}"
        return epoch, step, values, float(seconds)


# --------------------------------------------------------------------------- the run folders of R replicas


def pending_checkpoint(run: RunDir) -> Path:
    return run.path / PENDING_CHECKPOINT


def settle_checkpoints(run: RunDir, seeds: Sequence[int]) -> None:
    """Finish or undo a commit that a killed process left half done, so every replica's checkpoint.pt stands at
    the position RUN/replicas.json records (docs/SCALING.md)."""
    committed = read_json(run.replicas_commit) if run.replicas_commit.is_file() else {}
    for seed in seeds:
        pending = pending_checkpoint(run.seed_run(seed))
        if not pending.is_file():
            continue
        if not isinstance(committed, dict):
            raise MnistgenError(f"{run.replicas_commit}: not the replicas' saved position (a JSON object with "
                                f"\"epoch\" and \"step\"), which {pending} awaits")
        state = load_checkpoint(pending)
        position = (state.get("epoch"), state.get("step")) if isinstance(state, dict) else None
        if committed and position == (committed.get("epoch"), committed.get("step")):
            os.replace(pending, run.seed_run(seed).checkpoint)
        else:
            pending.unlink()
        sync_folder(pending.parent)


def check_replica_folder(run: RunDir, resume: bool, kind: str, config: Any, say: Callable[[str], None],
                         metric_keys: tuple[str, ...]) -> list[dict[str, Any] | None]:
    """The new-or-resume check of a replica run: each replica's checkpoint to continue from, or None."""
    seeds = replica_seeds(config)
    if not resume:
        if run.replicas_commit.is_file() or any(run.seed_run(s).checkpoint.is_file() for s in seeds):
            raise MnistgenError(f"{run.path} already holds a run: add --resume to continue it, or choose another --out")
        if run.checkpoint.is_file():
            raise MnistgenError(f"{run.path} already holds a single-seed run: choose another --out")
        return [None] * len(seeds)
    saved = run.read_config_to_resume(kind, type(config))
    if replica_seeds(saved) != seeds:
        raise MnistgenError(f"{run.path}: --resume must keep the seeds the run was trained with "
                            f"({','.join(map(str, replica_seeds(saved)))})")
    settle_checkpoints(run, seeds)
    checkpoints = [check_run_folder(run.seed_run(seed), True, kind, replica_config(config, seed), lambda line: None,
                                    metric_keys) if run.seed_run(seed).config.is_file() else None
                   for seed in seeds]
    positions = {(c["epoch"], c["step"]) if c is not None else (0, 0) for c in checkpoints}
    if len(positions) > 1:
        raise MnistgenError(f"{run.path}: its replicas' checkpoints stand at different positions "
                            f"({sorted(positions)}); they were not written by one replica run")
    if all(c is None for c in checkpoints):
        say(f"mnistgen: note: {run.path}: no checkpoint yet (its first start ended before one); starting from epoch "
            "1 with its settings")
    return checkpoints


def claim_runs(held: ExitStack, run: RunDir, resume: bool, kind: str, config: Any, say: Callable[[str], None],
               metric_keys: tuple[str, ...]) -> list[dict[str, Any] | None]:
    """Hold ``run`` until ``held`` closes and check it: each replica's checkpoint to continue from, or None. Under
    torchrun rank 0 alone does both, every rank gets its answer: also the barrier after which rank 0 writes."""
    if not is_replicated(config):
        def on_rank_0() -> dict[str, Any] | None:
            held.enter_context(run.claimed())
            return check_run_folder(run, resume, kind, config, say, metric_keys)

        return [from_main_rank(on_rank_0)]
    held.enter_context(run.claimed())
    return check_replica_folder(run, resume, kind, config, say, metric_keys)


def training_device(config: Any, *checks: Callable[[], None]) -> torch.device:
    """The device ``config`` trains on, after checking it (and running ``checks``) on every torchrun rank alike: an
    error on one stops them all. Replicas (``--seeds``, ``--replicas``) train in one process, not under torchrun."""
    with ranks_agree():
        validate(config)
        if is_replicated(config) and rank_and_size()[1] > 1:
            raise MnistgenError("replicas (--seeds, --replicas) train in one process; run them without torchrun, or "
                                "train each seed under torchrun on its own")
        device = resolve_device(config.device)
        check_device(device)
        check_global_batch(config.batch_size)
        for check in checks:
            check()
    return device


def check_same_data(run: RunDir, provenance: dict[str, Any]) -> None:
    """A one-line error where ``run`` continues on other data than it was trained on: its data.json's files, by role,
    against ``provenance``'s, by the MD5 of their decompressed contents (where both record files; the folder may
    move). A resume that finds the 5,000-digit sample where it was trained on MNIST stops here, before a step."""
    if not run.data.is_file():
        return

    def contents(record: dict[str, Any]) -> dict[str, str | None]:
        return {entry["role"]: entry.get("content_md5") for entry in record.get("files", [])}

    saved = read_json(run.data)
    trained_on, found = contents(saved), contents(provenance)
    if trained_on and found and trained_on != found:
        raise MnistgenError(
            f"{run.path} was trained on {saved.get('title', saved.get('dataset'))} from {saved.get('folder')}, but "
            f"the data found now are {provenance.get('title', provenance.get('dataset'))} from "
            f"{provenance.get('folder')}: resume it with the same files (--data-dir, or $MNISTGEN_DATA_DIR)")


@dataclass
class ReplicaRuns:
    """The run folders of a run of R replicas and their end-of-epoch sequence: ``states[k]`` is replica k's (RUN, or
    RUN/seed=N in a replica run); ``command`` continues the run (in the message of an interrupted run)."""

    run: RunDir
    config: Any
    command: str
    states: list[RunState] = dataclasses.field(default_factory=list)  # :meth:`add` one per seed, in their order
    unwritten: list[Sequence[dict[str, Any]]] = dataclasses.field(default_factory=list)  # epochs' records to write
    last_write: float = dataclasses.field(default_factory=time.monotonic)  # of the checkpoints (or the start)

    def add(self, seed: int, stateful: dict[str, Any], generators: dict[str, torch.Generator],
            values_key: str) -> None:
        """Append the run state of the replica of ``seed`` (its single-seed config)."""
        folder = self.run.seed_run(seed) if is_replicated(self.config) else self.run
        state = RunState(folder, replica_config(self.config, seed), stateful, generators, values_key)
        if is_replicated(self.config):
            state.checkpoint_path = pending_checkpoint(folder)
        self.states.append(state)

    def label(self, k: int, what: str) -> str:
        """``what`` of replica k as a message names it: "the training ELBO", or "seed 3's the training ELBO"."""
        return f"seed {self.states[k].config.seed}'s {what}" if is_replicated(self.config) else what

    def restore(self, checkpoints: Sequence[dict[str, Any] | None], say: Callable[[str], None]
                ) -> tuple[int, int, list[torch.Tensor | None], float] | None:
        """Every replica restored from its checkpoint; returns (epochs done, steps done of the next epoch, each
        replica's values of those steps, seconds spent in them), or None where the run is complete (with a note)."""
        epochs_done, start_step, values, seconds = 0, 0, [None] * len(self.states), 0.0
        for k, (state, checkpoint) in enumerate(zip(self.states, checkpoints, strict=True)):
            if checkpoint is not None:
                epochs_done, start_step, values[k], seconds = state.restore(checkpoint)
        partly_done = epochs_done + (start_step > 0)
        if self.config.epochs < partly_done:
            raise MnistgenError(f"{self.run.path}: {epochs_done} epochs are done already; give --epochs of at least "
                                f"{partly_done} to continue")
        if any(c is not None for c in checkpoints) and self.config.epochs == epochs_done and start_step == 0:
            say(f"mnistgen: note: {self.run.path}: all {epochs_done} epochs are done; nothing left to do (give a "
                "larger --epochs with --resume to train further)")
            return None
        return epochs_done, start_step, values, seconds

    def histories(self, keys: tuple[str, ...], say: Callable[[str], None], epochs: int | None = None
                  ) -> list[list[dict[str, Any]]]:
        """Each replica's metric records (of the first ``epochs`` epochs; all where None), read on rank 0."""
        return from_main_rank(lambda: [[r for r in s.run.read_metrics(keys, say) if epochs is None or
                                        r["epoch"] <= epochs] for s in self.states])

    def start(self, kind: str, epochs_done: int, provenance: dict[str, Any] | None) -> None:
        """Before the first step: drop the metric lines the checkpoints lack, write the configs and RUN/data.json;
        a run that continues on other data than its data.json names is refused first (:func:`check_same_data`)."""
        self.last_write = time.monotonic()
        if provenance is not None:
            from_main_rank(lambda: [check_same_data(state.run, provenance) for state in self.states])
        if is_replicated(self.config):
            self.run.write_config(to_dict(self.config), kind=kind)
        for state in self.states:
            if is_main_process():
                state.run.path.mkdir(parents=True, exist_ok=True)
            state.run.truncate_metrics(epochs_done, say=lambda line: None)
            state.run.write_config(to_dict(state.config), kind=kind)
            if provenance is not None and is_main_process():
                write_json(state.run.data, provenance)

    def save(self, *, epoch: int, step: int = 0, order_states: Sequence[torch.Tensor] | None = None,
             step_values: torch.Tensor | None = None, seconds: float = 0.0) -> None:
        """Every replica's checkpoint (:meth:`RunState.save`; ``step_values`` (R, steps, ...)), committed together in a
        replica run (:meth:`commit`); the defaults save between epochs."""
        if order_states is None:
            order_states = [state.generators["order"].get_state() for state in self.states]
        for k, state in enumerate(self.states):
            state.save(epoch=epoch, step=step, order_state=order_states[k],
                       step_values=torch.zeros(0) if step_values is None else step_values[k], seconds=seconds)
        if is_replicated(self.config) and is_main_process():
            self.commit(epoch=epoch, step=step)
        self.last_write = time.monotonic()

    def commit(self, *, epoch: int, step: int) -> None:
        """Once every replica's state is in its pending file: record the position, then rename each file."""
        write_json(self.run.replicas_commit, {"seeds": [s.config.seed for s in self.states], "epoch": epoch,
                                              "step": step})
        for state in self.states:
            os.replace(pending_checkpoint(state.run), state.run.checkpoint)
            sync_folder(state.run.path)
            state.kept = state.kept.replace(PENDING_CHECKPOINT, state.run.checkpoint.name)

    def end_steps(self, *, epoch: int, done: int, steps: int, step_values: torch.Tensor,
                  value_names: tuple[str, ...], order_states: Sequence[torch.Tensor], seconds: float) -> torch.Tensor:
        """The first half of the end of epoch ``epoch`` (0-based): the NaN guard on ``step_values`` (R, steps[, n]),
        then on Ctrl-C (``done < steps``) save and raise :class:`TrainingInterrupted`; returns (R, done, n), CPU."""
        values = step_values[:, :done].cpu().reshape(len(self.states), done, len(value_names))
        bad = torch.nonzero(~torch.isfinite(values))
        if len(bad):
            k, step, column = (int(i) for i in bad[0])
            check_finite(float(values[k, step, column]), self.label(k, value_names[column]), epoch + 1, step + 1,
                         self.states[k].kept)
        if done < steps:
            self.write(epoch=epoch, step=done, order_states=order_states, step_values=step_values, seconds=seconds)
            saved = (f"every replica's checkpoint in {self.run.path}" if is_replicated(self.config) else
                     str(self.run.checkpoint))
            raise TrainingInterrupted(f"interrupted in epoch {epoch + 1} after step {done} of {steps}; saved {saved}; "
                                      f"continue with: {self.command} --out {self.run.path} --resume")
        return values

    def record_epoch(self, records: Sequence[dict[str, Any]]) -> None:
        """The second half: each replica's record (its numbers finite) kept for RUN/metrics.jsonl; then, on the last
        epoch or once ``config.checkpoint_seconds`` have passed since the last write (rank 0's clock decides), the
        kept records and the completed epoch's checkpoints written (:meth:`write`)."""
        for k, record in enumerate(records):
            for key, value in record.items():
                if isinstance(value, float):
                    check_finite(value, self.label(k, key), record["epoch"], kept=self.states[k].kept)
        self.unwritten.append(records)
        epoch = records[0]["epoch"]
        if epoch == self.config.epochs or from_main_rank(
                lambda: time.monotonic() - self.last_write >= self.config.checkpoint_seconds):
            self.write(epoch=epoch)

    def write(self, **position: Any) -> None:
        """Append the kept records to each replica's RUN/metrics.jsonl, then :meth:`save` the checkpoints at
        ``position`` (its keyword arguments); where these cannot be saved (a full disk, a NaN weight), the lines are
        taken back: the metrics never hold an epoch the checkpoints lack."""
        ends = [state.run.metrics.stat().st_size if state.run.metrics.is_file() else 0 for state in self.states]
        try:
            for k, state in enumerate(self.states):
                state.run.append_metrics(*(records[k] for records in self.unwritten))
            self.save(**position)
        except MnistgenError:
            for state, end in zip(self.states, ends, strict=True):
                if is_main_process():
                    with suppress(OSError):  # if this fails too, the next --resume drops the lines
                        os.truncate(state.run.metrics, end)
            raise
        self.unwritten.clear()


def take_steps(engine: Any, start: int, steps: int, inputs: Callable[[int, int], Sequence[torch.Tensor]],
               values: torch.Tensor, stop: Callable[[], bool] = lambda: False, bar: Any = None) -> int:
    """Steps ``start..steps-1`` of every replica by ``engine``, polling ``stop`` before each run of
    ``engine.steps_between_polls`` steps; returns the number of steps done (the engine's state stored)."""
    done = start
    try:
        for first in range(start, steps, engine.steps_between_polls):
            if stop():
                break
            last = min(first + engine.steps_between_polls, steps)
            engine.run(first, last, inputs, values)
            done = last
            if bar is not None:
                bar.update(last - first)
    finally:
        engine.store()
    return done


SUBNORMAL_PROBE = 1e-41  # a float32 subnormal: products of it stay subnormal unless the CPU flushes them


def subnormals_flushed() -> bool:
    """Whether the CPU threads of torch's matrix products and elementwise kernels (sizes it splits over its threads)
    flush subnormal floats to zero: a product of subnormals is then exactly 0."""
    product = torch.full((512, 784), SUBNORMAL_PROBE) @ torch.ones(784, 512)
    elementwise = torch.full((1 << 18,), SUBNORMAL_PROBE) * 1.0
    return int(torch.count_nonzero(product)) == 0 and int(torch.count_nonzero(elementwise)) == 0


@contextmanager
def flushed_denormals(flush: bool, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """With ``flush``, the CPU flushes subnormal floats to zero inside the block (``torch.set_flush_denormal``); a note
    to ``say`` where it cannot, or where torch's threads started before keep IEEE arithmetic (a mode per thread)."""
    if not flush:
        yield
        return
    say = say or say_on_main_process
    if not torch.set_flush_denormal(True):
        say("mnistgen: note: this CPU cannot flush subnormal floats to zero; --flush-denormals has no effect")
        yield
        return
    if not subnormals_flushed():
        say("mnistgen: note: subnormal floats are flushed to zero only on the threads torch starts from now on: "
            "some of its CPU threads started before and keep IEEE arithmetic (same results, less speed-up)")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextmanager
def training_context(threads: int, stop: Callable[[], bool] | None, flush_denormals: bool = False,
                     say: Callable[[str], None] | None = None) -> Iterator[Callable[[], bool]]:
    """``threads`` CPU threads, subnormals flushed with ``flush_denormals``, and the stop request the loop polls:
    ``stop`` if given, else Ctrl-C (a first one stops after the current step, a second one at once)."""
    requested = threading.Event()

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    # Python delivers signals to the main thread only: elsewhere there is nothing to install
    install = stop is None and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, handler) if install else None
    try:
        with flushed_denormals(flush_denormals, say), torch_threads(threads):  # flushing first: new threads inherit it
            yield stop or requested.is_set
    finally:
        if install:
            signal.signal(signal.SIGINT, previous)
