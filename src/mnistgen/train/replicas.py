"""Seeds as replicas: several seeds of one config trained together, in one process, into one run folder.

RUN holds the replica run's config.json and one ordinary single-seed run folder per seed, RUN/seed=N (config.json
with that seed, data.json, metrics.jsonl, checkpoint.pt, the GAN's grids): what a separate ``--seed N`` run
writes, and readable by every command that reads a run. Replica k starts from the weights, batch order and noise
streams of that separate run and takes its steps, so it ends with its weights to float rounding.

How the steps are computed (:func:`choose_engine`):

- **batched** (:class:`StackedSteps`): the replicas' parameters are stacked, (R, ...) per tensor
  (``torch.func.stack_module_state``), and one step of all of them is ``torch.func.vmap`` over the reference path,
  the modules' own ``forward`` through ``torch.func.functional_call``, back-propagated by autograd, with one Adam
  over the stacked tensors (Adam is elementwise: the same as R Adams). R small steps become one step of R-fold
  wider kernels, which is what a GPU wants.
- **one by one** (:class:`OneByOneSteps`): each replica keeps its own modules, optimizer and accelerator, and
  each step of the loop steps every replica in turn, exactly as its separate run would. Chosen on the CPU where
  an accelerator (mnistgen's C kernels) applies: there it is faster than the batched reference path
  (docs/BENCHMARKS.md), and it is the separate runs' own arithmetic.

Each step draws every replica's data from that replica's own generators, in the separate run's order. Checkpoints
are committed together: each replica's state goes to RUN/seed=N/checkpoint.next.pt, then RUN/replicas.json records
the position (the commit), then each file is renamed to checkpoint.pt. A run killed between these steps is
settled when it is next opened (:func:`settle_checkpoints`): renames are finished for the committed position and
files of an uncommitted one are removed, so every replica resumes from the same step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..accelerate import note_choice
from ..accelerate.graphs import CapturedStep, graph_problem
from ..config import GANConfig, VAEConfig, replica_config, replica_seeds, to_dict, validate
from ..data.batches import num_batches, shuffled_batches
from ..data.protocols import Protocol, binarize_batch, load_protocol
from ..data.sources import load_raw
from ..device import resolve_device, seed_everything, stream_seed
from ..distributed import rank_and_size
from ..distributions import sample_uniform_noise
from ..errors import MnistgenError
from ..files import read_json, sync_folder, write_json
from ..losses import discriminator_loss, elbo_samples, generator_loss, standard_normal_draws, vae_elbo
from ..progress import progress
from ..runs import RunDir, is_main_process, load_checkpoint
from .common import (
    KEEP_THE_LAST_CHECKPOINT,
    RunState,
    TrainingInterrupted,
    check_finite,
    check_run_folder,
    keep_freed_memory,
    say_on_main_process,
    training_context,
)

PENDING_CHECKPOINT = "checkpoint.next.pt"  # a replica's state written, not yet committed


# --------------------------------------------------------------------------- the run folder


def pending_checkpoint(run: RunDir) -> Path:
    return run.path / PENDING_CHECKPOINT


def settle_checkpoints(run: RunDir, seeds: Sequence[int]) -> None:
    """Finish or undo a commit that a killed process left half done, so every replica's checkpoint.pt stands at
    the position RUN/replicas.json records (see the module's docstring)."""
    committed = read_json(run.replicas_commit) if run.replicas_commit.is_file() else None
    for seed in seeds:
        pending = pending_checkpoint(run.seed_run(seed))
        if not pending.is_file():
            continue
        state = load_checkpoint(pending)
        position = (state.get("epoch"), state.get("step")) if isinstance(state, dict) else None
        if committed is not None and position == (committed.get("epoch"), committed.get("step")):
            os.replace(pending, run.seed_run(seed).checkpoint)
        else:
            pending.unlink()
        sync_folder(pending.parent)


def commit_checkpoints(run: RunDir, states: Sequence[RunState], *, epoch: int, step: int) -> None:
    """After every replica's state is in its checkpoint.next.pt: record the position (the commit), then rename
    each to checkpoint.pt."""
    if not is_main_process():
        return
    write_json(run.replicas_commit, {"seeds": [s.config.seed for s in states], "epoch": epoch, "step": step})
    for state in states:
        os.replace(pending_checkpoint(state.run), state.run.checkpoint)
        sync_folder(state.run.path)
        state.kept = state.kept.replace(PENDING_CHECKPOINT, state.run.checkpoint.name)


def check_replica_folder(run: RunDir, resume: bool, kind: str, config: Any, may_change: tuple[str, ...],
                         say: Callable[[str], None], metric_keys: tuple[str, ...]) -> list[dict[str, Any] | None]:
    """The new-or-resume check of a replica run (:func:`mnistgen.train.common.check_run_folder` for RUN's own
    config and for each seed's folder); returns each replica's checkpoint to continue from, or None."""
    seeds = replica_seeds(config)
    if not resume:
        if run.replicas_commit.is_file() or any(run.seed_run(s).checkpoint.is_file() for s in seeds):
            raise MnistgenError(f"{run.path} already holds a run: add --resume to continue it, or choose another --out")
        if run.checkpoint.is_file():
            raise MnistgenError(f"{run.path} already holds a single-seed run: choose another --out")
        return [None] * len(seeds)
    if not run.config.is_file():
        raise MnistgenError(f"{run.path}: nothing to resume (no run here); train without --resume first")
    saved = run.read_config_as(kind, type(config), f"a {kind.upper()} run")
    if replica_seeds(saved) != seeds:
        raise MnistgenError(f"{run.path}: --resume must keep the seeds the run was trained with "
                            f"({','.join(map(str, replica_seeds(saved)))})")
    settle_checkpoints(run, seeds)
    checkpoints = []
    for seed in seeds:
        seed_run = run.seed_run(seed)
        if seed_run.config.is_file():
            checkpoints.append(check_run_folder(seed_run, True, kind, replica_config(config, seed), may_change,
                                                lambda line: None, metric_keys))
        else:
            checkpoints.append(None)
    positions = {(c["epoch"], c["step"]) if c is not None else (0, 0) for c in checkpoints}
    if len(positions) > 1:
        raise MnistgenError(f"{run.path}: its replicas' checkpoints stand at different positions "
                            f"({sorted(positions)}); they were not written by one replica run")
    if all(c is None for c in checkpoints):
        say(f"mnistgen: note: {run.path}: no checkpoint yet (its first start ended before one); starting from epoch "
            "1 with its settings")
    return checkpoints


# --------------------------------------------------------------------------- stacked parameters and Adam


def stack_parameters(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The modules' parameters stacked along a new first dimension: name -> (R, ...) leaf tensors (copies)."""
    params, _ = torch.func.stack_module_state(list(modules))
    return params


@torch.no_grad()
def unstack_into(params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, k: int, module: nn.Module,
                 module_optimizer: torch.optim.Optimizer) -> None:
    """Replica ``k``'s slice of the stacked parameters and of the stacked Adam's state, copied into its own module
    and into the state of its own (single-replica) Adam: what a separate run's checkpoint holds."""
    for name, parameter in module.named_parameters():
        parameter.copy_(params[name][k])
        stacked_state = optimizer.state.get(params[name], {})
        if stacked_state:
            module_optimizer.state[parameter] = {
                key: (value[k].clone() if key != "step" else value.clone()) for key, value in stacked_state.items()}


@torch.no_grad()
def stack_from(params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, k: int, module: nn.Module,
               module_optimizer: torch.optim.Optimizer) -> None:
    """The reverse of :func:`unstack_into`: replica ``k``'s module and Adam state (a restored checkpoint) copied
    into the stacked tensors."""
    for name, parameter in module.named_parameters():
        params[name][k].copy_(parameter)
        state = module_optimizer.state.get(parameter, {})
        if not state:
            continue
        stacked_state = optimizer.state.setdefault(params[name], {})
        for key, value in state.items():
            if key == "step":
                stacked_state["step"] = value.clone().to(params[name].device)
            else:
                stacked_state.setdefault(key, torch.zeros_like(params[name]))[k].copy_(value)


def stacked_adam(params: dict[str, torch.Tensor], like: torch.optim.Optimizer) -> torch.optim.Adam:
    """One Adam over the stacked tensors with the hyper-parameters of ``like`` (a replica's own Adam); capturable
    (its step count on the device) on CUDA, so that its step can be captured in a CUDA graph."""
    group = like.param_groups[0]
    capturable = next(iter(params.values())).device.type == "cuda"
    return torch.optim.Adam(list(params.values()), lr=group["lr"], betas=group["betas"], eps=group["eps"],
                            weight_decay=group["weight_decay"], fused=group.get("fused"), capturable=capturable)


def captured_if_possible(step: Callable[..., torch.Tensor], example_inputs: list[torch.Tensor],
                         parameters: list[torch.Tensor], optimizers: list[torch.optim.Optimizer],
                         device: torch.device, config: Any, say: Callable[[str], None]) -> tuple[Callable, bool]:
    """The batched step captured in a CUDA graph (:class:`mnistgen.accelerate.graphs.CapturedStep`) where that
    applies (CUDA, a fixed learning rate, not ``--cpu-kernels reference``), else the step itself (with a note on
    CUDA); returns (the step to call, whether it is captured)."""
    fixed_lr = getattr(config, "lr_schedule", "none") == "none"
    problem = "--cpu-kernels reference" if config.cpu_kernels == "reference" else graph_problem(device, fixed_lr)
    if problem is None:
        try:
            return CapturedStep(step, example_inputs, parameters, optimizers), True
        except RuntimeError as exc:
            problem = f"the step could not be captured: {' '.join(str(exc).split())[:200]}"
    if device.type == "cuda":
        say(f"mnistgen: note: the replicas' batched step is not captured in a CUDA graph: {problem}")
    return step, False


# --------------------------------------------------------------------------- a replica and the engines


@dataclass
class Replica:
    """One seed's own objects: its modules and Adams (what its checkpoint holds), its generators, its run state."""

    seed: int
    config: Any  # the single-seed config of this replica
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    order: torch.Generator
    noise: torch.Generator
    state: RunState
    average: nn.Module | None = None  # the GAN's moving average of G's weights (--ema-decay), or None


class _ElboOf(nn.Module):
    """A VAE's per-image ELBO as a module's forward, so that ``functional_call`` can run it on other weights."""

    def __init__(self, vae: nn.Module, analytic_kl: bool, importance_weighted: bool):
        super().__init__()
        self.vae, self.analytic_kl, self.importance_weighted = vae, analytic_kl, importance_weighted

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return vae_elbo(self.vae, x, eps, self.analytic_kl, self.importance_weighted)


class StackedSteps:
    """The batched engine: every replica's step at once, ``vmap`` over the reference path (see the module)."""

    name = "batched (vmap over the reference path)"

    def __init__(self, replicas: list[Replica]):
        self.replicas = replicas
        self.keys = list(replicas[0].modules)
        self.params = {key: stack_parameters([r.modules[key] for r in replicas]) for key in self.keys}
        self.optimizers = {key: stacked_adam(self.params[key], replicas[0].optimizers[key]) for key in self.keys}
        self.averages = None  # the GAN's moving averages of G, stacked, where it keeps them
        if replicas[0].average is not None:
            self.averages = {f"generator.{name}": tensor.detach() for name, tensor in
                             stack_parameters([r.average for r in replicas]).items()}

    def load(self) -> None:
        """The replicas' own modules and Adams (as restored from their checkpoints) into the stacked tensors."""
        for k, replica in enumerate(self.replicas):
            for key in self.keys:
                stack_from(self.params[key], self.optimizers[key], k, replica.modules[key], replica.optimizers[key])
            if self.averages is not None:
                with torch.no_grad():
                    for name, parameter in replica.average.named_parameters():
                        self.averages[f"generator.{name}"][k].copy_(parameter)

    def store(self) -> None:
        """The stacked tensors into each replica's own modules and Adams (before a save or an evaluation)."""
        for k, replica in enumerate(self.replicas):
            for key in self.keys:
                unstack_into(self.params[key], self.optimizers[key], k, replica.modules[key], replica.optimizers[key])
            if self.averages is not None:
                with torch.no_grad():
                    for name, parameter in replica.average.named_parameters():
                        parameter.copy_(self.averages[f"generator.{name}"][k])

    def set_lr(self, lr: float, key: str | None = None) -> None:
        for name in [key] if key else self.keys:
            for group in self.optimizers[name].param_groups:
                group["lr"] = lr


class OneByOneSteps:
    """The CPU engine where an accelerator applies: each replica's own step in turn (see the module)."""

    name = "one replica after another"

    def __init__(self, replicas: list[Replica]):
        self.replicas = replicas

    def load(self) -> None:
        pass

    def store(self) -> None:
        pass

    def set_lr(self, lr: float, key: str | None = None) -> None:
        for replica in self.replicas:
            for name, optimizer in replica.optimizers.items():
                if key is None or name == key:
                    for group in optimizer.param_groups:
                        group["lr"] = lr


ONE_BY_ONE_STEPS = 10  # steps each replica takes in turn on the one-by-one engine (the stop request is polled between)


def step_chunks(start: int, steps: int, engine: Any) -> list[tuple[int, int]]:
    """The runs of steps [first, last) the loop takes between two polls of the stop request: single steps on the
    batched engine; on the one-by-one engine :data:`ONE_BY_ONE_STEPS` steps of each replica in turn, so that its
    weights and Adam state stay in the CPU's cache (interleaving replicas step by step evicts them: an hw VAE
    replica's are 10 MB). Every replica stands at the same step between chunks, where a checkpoint may be taken."""
    size = 1 if isinstance(engine, StackedSteps) else ONE_BY_ONE_STEPS
    return [(first, min(first + size, steps)) for first in range(start, steps, size)]


def _as_reference(choice: Any) -> Any:
    """A choice as the batched engine takes it: the reference path, whatever accelerator would apply alone."""
    if choice.accelerator is None:
        return choice
    reason = f"{choice.accelerator.name}: the replicas train batched (vmap over the reference path) here"
    return dataclasses.replace(choice, accelerator=None, skipped=(*choice.skipped, reason))


def use_stacked(device: torch.device, accelerated: bool) -> bool:
    """Batched (vmap) unless on the CPU with an accelerator, where the replicas are stepped one by one."""
    return device.type != "cpu" or not accelerated


# --------------------------------------------------------------------------- shared loop pieces


def _claim_and_check(held: ExitStack, run: RunDir, resume: bool, kind: str, config: Any,
                     may_change: tuple[str, ...], say: Callable[[str], None],
                     metric_keys: tuple[str, ...]) -> list[dict[str, Any] | None]:
    if rank_and_size()[1] > 1:
        raise MnistgenError("replicas (--seeds, --replicas) train in one process; run them without torchrun, or "
                            "train each seed under torchrun on its own")
    held.enter_context(run.claimed())
    return check_replica_folder(run, resume, kind, config, may_change, say, metric_keys)


def _first_epoch(replicas: list[Replica], checkpoints: list[dict[str, Any] | None], run: RunDir, config: Any,
                 say: Callable[[str], None]) -> tuple[int, int, list[torch.Tensor | None], float, bool]:
    """Restore every replica (all at the same position); returns (epochs done, step, each one's step values,
    seconds, whether epochs are left)."""
    from .common import epochs_left

    epochs_done, start_step, values, seconds = 0, 0, [None] * len(replicas), 0.0
    for k, (replica, checkpoint) in enumerate(zip(replicas, checkpoints, strict=True)):
        if checkpoint is not None:
            epochs_done, start_step, values[k], seconds = replica.state.restore(checkpoint)
    left = True if all(c is None for c in checkpoints) else epochs_left(run, config, epochs_done, start_step, say)
    return epochs_done, start_step, values, seconds, left


def _start_folders(run: RunDir, kind: str, config: Any, replicas: list[Replica], epochs_done: int,
                   provenance: dict[str, Any] | None) -> None:
    run.write_config(to_dict(config), kind=kind)
    for replica in replicas:
        seed_run = replica.state.run
        seed_run.path.mkdir(parents=True, exist_ok=True)
        seed_run.truncate_metrics(epochs_done, say=lambda line: None)
        seed_run.write_config(to_dict(replica.config), kind=kind)
        if provenance is not None and is_main_process():
            write_json(seed_run.data, provenance)


def _save_all(run: RunDir, replicas: list[Replica], *, epoch: int, step: int, order_states: list[torch.Tensor],
              step_values: torch.Tensor, seconds: float) -> None:
    """Every replica's checkpoint, committed together (see :func:`commit_checkpoints`)."""
    for k, replica in enumerate(replicas):
        replica.state.save(epoch=epoch, step=step, order_state=order_states[k], step_values=step_values[k],
                           seconds=seconds)
    commit_checkpoints(run, [r.state for r in replicas], epoch=epoch, step=step)


def _epoch_orders(replicas: list[Replica], count: int, batch_size: int, drop_last: bool, device: torch.device
                  ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], torch.Tensor]:
    """Each replica's batch order for the next epoch, from its own order generator (as its separate run draws
    it): (the generators' states before it, each replica's batches, their indices stacked (R, n) on the device)."""
    states = [r.order.get_state() for r in replicas]
    batches = [list(shuffled_batches(count, batch_size, r.order, drop_last=drop_last)) for r in replicas]
    return states, batches, torch.stack([torch.cat(b) for b in batches]).to(device)


def _step_values(shape: tuple[int, ...], saved: list[torch.Tensor | None], start_step: int, device: torch.device,
                 dtype: torch.dtype | None) -> torch.Tensor:
    """The per-step values of an epoch, (R, steps, ...): zeros, with a resumed epoch's first steps restored."""
    values = torch.zeros(shape, device=device, dtype=dtype)
    for k in range(shape[0] if start_step else 0):
        values[k, :start_step] = saved[k].to(device)
    return values


def _check_steps(replicas: list[Replica], values: torch.Tensor, names: tuple[str, ...], epoch: int) -> None:
    """The NaN guard of :func:`mnistgen.train.common.end_steps`, for every replica's step values (R, done, ...)."""
    flat = values.cpu().reshape(len(replicas), values.shape[1], len(names))
    bad = torch.nonzero(~torch.isfinite(flat))
    if len(bad):
        k, step, column = (int(i) for i in bad[0])
        check_finite(float(flat[k, step, column]), f"seed {replicas[k].seed}'s {names[column]}", epoch + 1, step + 1,
                     replicas[k].state.kept)


def _interrupted(run: RunDir, command: str, epoch: int, done: int, steps: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"interrupted in epoch {epoch + 1} after step {done} of {steps}; saved every "
                               f"replica's checkpoint in {run.path}; continue with: {command} --out {run.path} "
                               "--resume")


def _run_state(run: RunDir, seed: int, config: Any, stateful: dict[str, Any], generators: dict[str, torch.Generator],
               values_key: str) -> RunState:
    state = RunState(run.seed_run(seed), config, stateful, generators, values_key)
    state.checkpoint_path = pending_checkpoint(run.seed_run(seed))
    return state


# --------------------------------------------------------------------------- the VAE


def train_vae_replicas(config: VAEConfig, run: RunDir, *, resume: bool = False, protocol: Protocol | None = None,
                       stop: Callable[[], bool] | None = None, show_progress: bool | None = None,
                       say: Callable[[str], None] | None = None) -> dict[int, list[dict[str, Any]]]:
    """:func:`mnistgen.train.vae.train_vae` for a config with several seeds: returns each seed's history."""
    from ..accelerate.vae import choose_vae_accelerator  # noqa: I001 - beside the loop's own imports
    from .vae import (
        EVAL_STREAM,
        NOISE_STREAM,
        RESUMABLE_FIELDS,
        build_model,
        learning_rate,
        make_optimizer,
        metric_keys,
    )

    say = say or say_on_main_process
    validate(config)
    device = resolve_device(config.device)
    keys = metric_keys(config)
    with ExitStack() as held:
        checkpoints = _claim_and_check(held, run, resume, "vae", config, RESUMABLE_FIELDS, say, keys)
        with training_context(config.threads, stop, config.flush_denormals, say) as stop_requested:
            replicas, choice = [], None
            for seed in replica_seeds(config):
                one = replica_config(config, seed)
                order = seed_everything(seed)  # the global RNG initialises the weights, as in the separate run
                model = build_model(one, device)
                if choice is None:  # the same models and config for every replica: one choice (and probe)
                    choice = choose_vae_accelerator(model, one, device)
                optimizer = make_optimizer(model, one.lr)
                noise = torch.Generator(device=device)
                noise.manual_seed(stream_seed(seed, NOISE_STREAM))
                state = _run_state(run, seed, one, {"model": model, "optimizer": optimizer},
                                   {"order": order, "noise": noise}, "step_elbos")
                replicas.append(Replica(seed, one, {"model": model}, {"model": optimizer}, order, noise, state))
            stacked = use_stacked(device, choice.accelerator is not None)
            if stacked:
                engine: StackedSteps | OneByOneSteps = StackedSteps(replicas)
                note_choice("VAE", {"": _as_reference(choice)}, say)
                trained_by = f"{len(replicas)} replicas, {engine.name}"
            else:
                engine = OneByOneSteps(replicas)
                note_choice("VAE", {"": choice}, say)
                trained_by = f"{len(replicas)} replicas, {engine.name}, {choice.name}"
            epochs_done, start_step, saved, seconds_before, left = _first_epoch(replicas, checkpoints, run, config,
                                                                                 say)
            if not left:
                return {r.seed: r.state.run.read_metrics(keys, say) for r in replicas}
            engine.load()
            if protocol is None:
                protocol = load_protocol(config.protocol, load_raw(config.data), config.validation_size)
            if protocol.train_images.dim() != 2:
                raise MnistgenError(f"protocol {protocol.name!r} has no flat images; the VAE trains on hw or full")
            histories = {r.seed: [rec for rec in r.state.run.read_metrics(keys, say) if rec["epoch"] <= epochs_done]
                         if epochs_done else [] for r in replicas}
            _start_folders(run, "vae", config, replicas, epochs_done,
                           {**protocol.provenance, "dynamic_binarization": protocol.dynamic_binarization})
            accelerators = [None if stacked or choice.accelerator is None else
                            choice.accelerator.implementation(r.modules["model"], r.optimizers["model"], r.config)
                            for r in replicas]  # after the restore, as in the separate run
            return _train_vae(config, run, replicas, engine, accelerators, protocol, device, epochs_done, start_step,
                              saved, seconds_before, histories, stop_requested, show_progress, trained_by,
                              learning_rate, EVAL_STREAM, say)


def _train_vae(config, run, replicas, engine, accelerators, protocol, device, epochs_done, start_step, saved,
               seconds_before, histories, stop, show_progress, trained_by, learning_rate, eval_stream, say):
    from .vae import COMMAND, reference_step, training_value

    models = [r.modules["model"] for r in replicas]
    dtype = next(models[0].parameters()).dtype
    data = protocol.to(device)
    train_images, eval_images = data.train_images.to(dtype), data.eval_images.to(dtype)
    analytic_kl, importance_weighted = config.objective == "analytic", config.objective == "iwae"
    draws = config.train_samples if importance_weighted or config.train_samples > 1 else None  # as train_epoch
    latent_dim = models[0].latent_dim
    R = len(replicas)
    if isinstance(engine, StackedSteps):
        objective = _ElboOf(models[0], analytic_kl, importance_weighted)
        params = {f"vae.{name}": tensor for name, tensor in engine.params["model"].items()}

        def replica_elbo(replica_params, x, eps):  # one replica: x (B, 784), eps (B, D_z) -> (B,)
            return torch.func.functional_call(objective, replica_params, (x, eps))

        batched_elbo = torch.func.vmap(replica_elbo)  # (R, B, 784), (R, [K,] B, D_z) -> (R, B)
        optimizer = engine.optimizers["model"]

        def stacked_step(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            elbo = batched_elbo(params, x, eps)  # (R, B)
            loss = -elbo.mean(dim=1).sum()  # each replica's gradient is that of its own -mean objective
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return elbo.detach().sum(dim=1)  # (R,)

        example = [torch.zeros(R, config.batch_size, train_images.shape[1], device=device, dtype=dtype),
                   torch.zeros(R, *((draws,) if draws else ()), config.batch_size, latent_dim, device=device,
                               dtype=dtype)]
        run_step, captured = captured_if_possible(stacked_step, example, list(params.values()), [optimizer], device,
                                                  config, say)
        if captured:
            trained_by += ", captured in a CUDA graph"
    steps = num_batches(len(train_images), config.batch_size, drop_last=False)
    bar = progress(total=steps * (config.epochs - epochs_done) - start_step, description="vae",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            lr = learning_rate(config, epoch)
            engine.set_lr(lr)
            bar.set_description(f"vae epoch {epoch + 1}/{config.epochs} ({R} seeds)")
            order_states, batches, orders = _epoch_orders(replicas, len(train_images), config.batch_size, False, device)
            ends = [0, *torch.tensor([len(b) for b in batches[0]]).cumsum(0).tolist()]
            step_elbos = _step_values((R, len(batches[0])), saved, start_step, device, dtype)
            started = time.perf_counter()
            done = start_step
            for first, last in step_chunks(start_step, len(batches[0]), engine):
                if stop():
                    break
                if isinstance(engine, StackedSteps):  # one step of every replica at once
                    x = train_images[orders[:, ends[first]:ends[first + 1]]]  # (R, B, 784)
                    if data.dynamic_binarization:
                        x = torch.stack([binarize_batch(x[k], r.noise) for k, r in enumerate(replicas)])
                    eps = torch.stack([standard_normal_draws(x.shape[1], latent_dim, r.noise, x, draws)
                                       for r in replicas])  # (R, [K,] B, D_z), each from its replica's stream
                    step_elbos[:, first] = run_step(x, eps)
                else:  # each replica's steps first..last in turn, its weights staying in the cache
                    for k, replica in enumerate(replicas):
                        for step in range(first, last):
                            x = train_images[orders[k, ends[step]:ends[step + 1]]]  # (B, 784)
                            if data.dynamic_binarization:
                                x = binarize_batch(x, replica.noise)
                            eps = standard_normal_draws(len(x), latent_dim, replica.noise, x, draws)
                            if accelerators[k] is None:
                                step_elbos[k, step] = reference_step(replica.modules["model"],
                                                                     replica.optimizers["model"], x, eps,
                                                                     analytic_kl, importance_weighted)
                            else:
                                step_elbos[k, step] = accelerators[k].step(x, eps)
                done = last
                bar.update(last - first)
            for accelerator in accelerators:
                if accelerator is not None:
                    accelerator.store()
            engine.store()
            train_seconds = seconds_before + time.perf_counter() - started
            _check_steps(replicas, step_elbos[:, :done], ("the training ELBO",), epoch)
            if done < len(batches[0]):
                _save_all(run, replicas, epoch=epoch, step=done, order_states=order_states, step_values=step_elbos,
                          seconds=train_seconds)
                raise _interrupted(run, COMMAND, epoch, done, len(batches[0]))
            n = sum(len(b) for b in batches[0])
            for k, replica in enumerate(replicas):
                evaluation = torch.Generator(device=device)
                evaluation.manual_seed(stream_seed(replica.seed, eval_stream, epoch))
                eval_elbo = float(elbo_samples(models[k], eval_images, samples=1, analytic_kl=analytic_kl,
                                               generator=evaluation).mean())
                record = {"epoch": epoch + 1, "train_elbo": float(step_elbos[k].sum()) / n,
                          f"{data.eval_name}_elbo": eval_elbo, "lr": lr, "train_seconds": train_seconds,
                          "seconds": seconds_before + time.perf_counter() - started, "trained_by": trained_by,
                          **training_value(config)}
                for key, value in record.items():
                    if isinstance(value, float):
                        check_finite(value, f"seed {replica.seed}'s {key}", epoch + 1, kept=replica.state.kept)
                histories[replica.seed].append(record)
            for replica in replicas:
                replica.state.run.append_metrics(histories[replica.seed][-1])
            _save_all(run, replicas, epoch=epoch + 1, step=0, order_states=[r.order.get_state() for r in replicas],
                      step_values=torch.zeros(R, 0), seconds=0.0)
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return histories


# --------------------------------------------------------------------------- the GAN


class _GANStep(nn.Module):
    """G and D together, so that one ``functional_call`` can run either network on one replica's weights."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator

    def forward(self, mode: str, inputs: torch.Tensor) -> torch.Tensor:
        return self.generator(inputs) if mode == "generate" else self.discriminator(inputs)


def train_gan_replicas(config: GANConfig, images: torch.Tensor, run: RunDir, *, resume: bool = False,
                       provenance: dict[str, Any] | None = None, stop: Callable[[], bool] | None = None,
                       show_progress: bool | None = None,
                       say: Callable[[str], None] | None = None) -> dict[int, list[dict[str, Any]]]:
    """:func:`mnistgen.train.gan.train_gan` for a config with several seeds: returns each seed's history."""
    from ..accelerate.gan import choose_gan_accelerators
    from .gan import (
        NOISE_STREAM,
        REFERENCE,
        RESUMABLE_FIELDS,
        STATS,
        GANCalls,
        _prepared,
        build_models,
        check_images,
        grid_noise,
        make_optimizers,
        save_grid,
        weight_average,
    )

    say = say or say_on_main_process
    validate(config)
    device = resolve_device(config.device)
    check_images(images, config)
    keep_freed_memory()
    with ExitStack() as held:
        checkpoints = _claim_and_check(held, run, resume, "gan", config, RESUMABLE_FIELDS, say, STATS)
        with training_context(config.threads, stop, config.flush_denormals, say) as stop_requested:
            replicas, calls, choices = [], [], None
            for seed in replica_seeds(config):
                one = replica_config(config, seed)
                order = seed_everything(seed)  # the global RNG initialises the weights, as in the separate run
                generator, discriminator = build_models(one, device)
                if choices is None:  # the same models and config for every replica: one choice (and probe)
                    choices = choose_gan_accelerators(generator, discriminator, one, device)
                    stacked = use_stacked(device, any(c.accelerator is not None for c in choices))
                if not stacked:  # before the optimizers: an accelerator may change the weights' memory layout
                    calls.append(GANCalls(_prepared(choices[0], generator, device, REFERENCE.generate),
                                          _prepared(choices[1], discriminator, device, REFERENCE.discriminate),
                                          f"G {choices[0].name}, D {choices[1].name}"))
                optimizer_g, optimizer_d = make_optimizers(generator, discriminator, one)
                average = weight_average(generator) if one.ema_decay is not None else None  # G's initial weights
                noise = torch.Generator(device=device)
                noise.manual_seed(stream_seed(seed, NOISE_STREAM))
                state = _run_state(run, seed, one, {"generator": generator, "discriminator": discriminator,
                                                    "optimizer_g": optimizer_g, "optimizer_d": optimizer_d,
                                                    **({"generator_ema": average} if average is not None else {})},
                                   {"order": order, "noise": noise}, "step_stats")
                replicas.append(Replica(seed, one, {"generator": generator, "discriminator": discriminator},
                                        {"generator": optimizer_g, "discriminator": optimizer_d}, order, noise,
                                        state, average))
            if stacked:
                engine: StackedSteps | OneByOneSteps = StackedSteps(replicas)
                note_choice("GAN", {"G": _as_reference(choices[0]), "D": _as_reference(choices[1])}, say)
                trained_by = f"{len(replicas)} replicas, {engine.name}"
            else:
                engine = OneByOneSteps(replicas)
                note_choice("GAN", {"G": choices[0], "D": choices[1]}, say)
                trained_by = f"{len(replicas)} replicas, {engine.name}, {calls[0].trained_by}"
            epochs_done, start_step, saved, seconds_before, left = _first_epoch(replicas, checkpoints, run, config,
                                                                                 say)
            if not left:
                return {r.seed: r.state.run.read_metrics(STATS, say) for r in replicas}
            engine.load()
            histories = {r.seed: [rec for rec in r.state.run.read_metrics(STATS, say) if rec["epoch"] <= epochs_done]
                         if epochs_done else [] for r in replicas}
            _start_folders(run, "gan", config, replicas, epochs_done, provenance)
            fixed = [grid_noise(r.config, device) for r in replicas]
            if all(c is None for c in checkpoints):
                for replica, noise in zip(replicas, fixed, strict=True):
                    save_grid(replica.state.run, 0, replica.modules["generator"], noise, replica.average)
                _save_all(run, replicas, epoch=0, step=0, order_states=[r.order.get_state() for r in replicas],
                          step_values=torch.zeros(len(replicas), 0, len(STATS)), seconds=0.0)
            return _train_gan(config, images, run, replicas, engine, calls, device, epochs_done, start_step, saved,
                              seconds_before, histories, stop_requested, show_progress, trained_by, fixed, STATS,
                              save_grid, say)


def _train_gan(config, images, run, replicas, engine, calls, device, epochs_done, start_step, saved,
               seconds_before, histories, stop, show_progress, trained_by, fixed, stats_names, save_grid, say):
    from .gan import COMMAND, train_step, update_ema

    R = len(replicas)
    decay = config.ema_decay  # None: no moving average of G
    generators = [r.modules["generator"] for r in replicas]
    images = images.to(device, next(replicas[0].modules["discriminator"].parameters()).dtype)
    g_dtype = next(generators[0].parameters()).dtype
    zdim = generators[0].zdim
    if isinstance(engine, StackedSteps):
        both = _GANStep(generators[0], replicas[0].modules["discriminator"])
        g_params = {f"generator.{n}": t for n, t in engine.params["generator"].items()}
        ema_params = None if decay is None else engine.averages  # (R, ...) each, beside G's
        d_params = {f"discriminator.{n}": t for n, t in engine.params["discriminator"].items()}
        generate = torch.func.vmap(lambda p, z: torch.func.functional_call(both, p, ("generate", z)))
        discriminate = torch.func.vmap(lambda p, x: torch.func.functional_call(both, p, ("discriminate", x)))
        optimizer_g, optimizer_d = engine.optimizers["generator"], engine.optimizers["discriminator"]
        per_replica_d_loss = torch.func.vmap(discriminator_loss)  # (R, B, 1) twice -> (R,)
        per_replica_g_loss = torch.func.vmap(generator_loss)

        def stacked_step(real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            """Every replica's D step, then G step, on the same G(z); returns (R, 4) in the order of STATS."""
            fake = generate(g_params, z)  # (R, B, 1, 28, 28), once for both steps
            real_logits = discriminate(d_params, real)  # (R, B, 1)
            fake_logits = discriminate(d_params, fake.detach())
            d_loss = per_replica_d_loss(real_logits, fake_logits)  # (R,)
            optimizer_d.zero_grad(set_to_none=True)
            d_loss.sum().backward()
            optimizer_d.step()
            g_loss = per_replica_g_loss(discriminate(d_params, fake))  # with the D just updated
            optimizer_g.zero_grad(set_to_none=True)
            g_loss.sum().backward(inputs=list(g_params.values()))
            optimizer_g.step()
            if ema_params is not None:  # elementwise: each replica's average of its own G
                update_ema(list(ema_params.values()), list(g_params.values()), decay)
            with torch.no_grad():
                return torch.stack([d_loss, g_loss, torch.sigmoid(real_logits).mean(dim=(1, 2)),
                                    torch.sigmoid(fake_logits).mean(dim=(1, 2))], dim=1)

        d_dtype = next(iter(d_params.values())).dtype
        example = [torch.zeros(R, config.batch_size, *images.shape[1:], device=device, dtype=d_dtype),
                   torch.zeros(R, config.batch_size, zdim, device=device, dtype=g_dtype)]
        run_step, captured = captured_if_possible(stacked_step, example, [*g_params.values(), *d_params.values()],
                                                  [optimizer_g, optimizer_d], device, config, say)
        if captured:
            trained_by += ", captured in a CUDA graph"
    steps = num_batches(len(images), config.batch_size, drop_last=True)
    bar = progress(total=steps * max(config.epochs - epochs_done, 0) - start_step, description="gan",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            bar.set_description(f"gan epoch {epoch + 1}/{config.epochs} ({R} seeds)")
            order_states, batches, orders = _epoch_orders(replicas, len(images), config.batch_size, True, device)
            B = config.batch_size
            step_stats = _step_values((R, len(batches[0]), len(stats_names)), saved, start_step, device, None)
            started = time.perf_counter()
            done = start_step
            for first, last in step_chunks(start_step, len(batches[0]), engine):
                if stop():
                    break
                if isinstance(engine, StackedSteps):  # one step of every replica at once
                    real = images[orders[:, first * B:(first + 1) * B]]  # (R, B, 1, 28, 28)
                    z = torch.stack([sample_uniform_noise(B, zdim, r.noise).to(g_dtype) for r in replicas])
                    step_stats[:, first] = run_step(real, z)  # z: (R, B, zdim), each from its replica's stream
                else:  # each replica's steps first..last in turn
                    for k, replica in enumerate(replicas):
                        for step in range(first, last):
                            real = images[orders[k, step * B:(step + 1) * B]]  # (B, 1, 28, 28)
                            z = sample_uniform_noise(B, zdim, replica.noise).to(g_dtype)
                            step_stats[k, step] = train_step(
                                replica.modules["generator"], replica.modules["discriminator"],
                                replica.optimizers["generator"], replica.optimizers["discriminator"], real, z,
                                calls[k])
                            if replica.average is not None:
                                update_ema(list(replica.average.parameters()),
                                           list(replica.modules["generator"].parameters()), decay)
                done = last
                bar.update(last - first)
            engine.store()
            seconds = seconds_before + time.perf_counter() - started
            _check_steps(replicas, step_stats[:, :done], stats_names, epoch)
            if done < len(batches[0]):
                _save_all(run, replicas, epoch=epoch, step=done, order_states=order_states, step_values=step_stats,
                          seconds=seconds)
                raise _interrupted(run, COMMAND, epoch, done, len(batches[0]))
            means = step_stats.mean(dim=1).tolist()  # (R, 4)
            for k, replica in enumerate(replicas):
                record = {"epoch": epoch + 1, **dict(zip(stats_names, means[k], strict=True)), "seconds": seconds,
                          "trained_by": trained_by}
                for key, value in record.items():
                    if isinstance(value, float):
                        check_finite(value, f"seed {replica.seed}'s {key}", epoch + 1, kept=replica.state.kept)
                histories[replica.seed].append(record)
            for k, replica in enumerate(replicas):
                if epoch + 1 == config.epochs or (epoch + 1) % config.grid_every == 0:
                    save_grid(replica.state.run, epoch + 1, generators[k], fixed[k], replica.average)
                replica.state.run.append_metrics(histories[replica.seed][-1])
            _save_all(run, replicas, epoch=epoch + 1, step=0, order_states=[r.order.get_state() for r in replicas],
                      step_values=torch.zeros(R, 0, len(stats_names)), seconds=0.0)
            bar.set_postfix(d_loss=f"{sum(m[0] for m in means) / R:.3f}", g_loss=f"{sum(m[1] for m in means) / R:.3f}")
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return histories


__all__ = ["train_vae_replicas", "train_gan_replicas", "settle_checkpoints", "KEEP_THE_LAST_CHECKPOINT"]
