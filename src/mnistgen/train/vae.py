"""Training the VAE of SPEC §2: the one loop, :func:`train_vae`, for R >= 1 replicas (seeds); returns its history.

Per epoch, for each replica: the batch order comes from its order generator
(:func:`mnistgen.data.batches.shuffled_batches`); each step draws (full protocol: a fresh binary image from each gray
image, then) one eps ~ N(0, I) per image (K = ``--train-samples`` of them with ``--objective iwae`` or K > 1) from its
noise generator, and takes the one training step, :func:`mnistgen.models.vae.train_step`, by the engine
(:func:`mnistgen.accelerate.vae.vae_engine`; each metrics line records it as ``trained_by``). After the epoch the
one-sample ELBO of the evaluation images (test for ``hw``, validation for ``full``; Eq. 2 for iwae) is measured and the
epoch's line kept for RUN/metrics.jsonl, written with RUN/checkpoint.pt (replaced atomically) every
``--checkpoint-seconds`` (:meth:`mnistgen.train.common.ReplicaRuns.record_epoch`).

The random streams (the batch order; eps and the full protocol's binary images; the evaluation's, seeded anew per
epoch), resume and torchrun are as :mod:`mnistgen.train.common` describes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch

from ..accelerate import note_choice
from ..accelerate.engines import Replica
from ..accelerate.vae import choose_vae_accelerator, held_out_elbo, vae_engine
from ..config import VAEConfig, is_replicated, replica_seeds
from ..data.batches import epoch_order, num_batches
from ..data.protocols import Protocol, binarize_batch, load_protocol
from ..data.sources import load_raw
from ..device import seed_everything, stream_seed
from ..distributed import (
    check_global_batch,
    main_rank_first,
    rank_and_size,
    rank_share,
    ranks_agree,
    stop_on_every_rank,
    sum_over_ranks,
)
from ..errors import MnistgenError, TrainingInterrupted
from ..losses import standard_normal_draws
from ..models import vae as vae_model
from ..progress import progress
from ..runs import RunDir
from .common import ReplicaRuns, claim_runs, say_on_main_process, take_steps, training_context, training_device

NOISE_STREAM = 1  # key of the generator that draws eps and the full protocol's binary images
EVAL_STREAM = 2  # key of the per-epoch generators of the evaluation ELBO
COMMAND = "mnistgen vae train"

__all__ = ["TrainingInterrupted", "train_vae", "learning_rate"]


def metric_keys(config: VAEConfig) -> tuple[str, ...]:
    """The numbers every metrics line of a VAE run holds: the training ELBO and the held-out one (the test set's
    under hw, the validation set's under full)."""
    return ("train_elbo", "validation_elbo" if config.protocol == "full" else "test_elbo")


def learning_rate(config: VAEConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under ``config.lr_schedule``."""
    if config.lr_schedule == "cosine":
        return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * epoch / config.epochs))
    if config.lr_schedule == "step":
        return config.lr * config.lr_decay ** (epoch // config.lr_decay_every)
    return config.lr


def training_value(config: VAEConfig) -> dict[str, str]:
    """What a metrics line's ``train_elbo`` is, where it is not SPEC's one-sample ELBO: {"train_elbo_is": ...}
    for ``--objective iwae`` (the K-sample bound L_K, above the ELBO for K > 1) or ``--train-samples`` K > 1 (the
    mean of K one-sample ELBOs); {} otherwise, so the lines of SPEC's objectives stay as they were."""
    samples = config.train_samples
    if config.objective == "iwae":
        return {"train_elbo_is": f"the importance-weighted bound L_{samples} ({samples} draws per image)"}
    if samples > 1:
        equation = 1 if config.objective == "analytic" else 2
        return {"train_elbo_is": f"the mean of {samples} one-sample ELBOs (Eq. {equation})"}
    return {}


def step_inputs(images: torch.Tensor, orders: Sequence[torch.Tensor], noises: Sequence[torch.Generator],
                batch_size: int, latent_dim: int, draws: int | None, dynamic_binarization: bool
                ) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """The inputs of an epoch's steps: ``inputs(k, s)`` is replica k's step s, x (B, 784) (``images`` (N, 784) in
    the epoch's ``orders[k]``, binarized anew from gray levels with ``dynamic_binarization``) and eps ([K,] B, D_z),
    drawn from ``noises[k]``; under torchrun this rank's share of both (every rank draws the whole batch)."""
    rank, world_size = rank_and_size()

    def inputs(k: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.index_select(0, orders[k][step * batch_size:(step + 1) * batch_size])  # (B, 784)
        if dynamic_binarization:
            x = binarize_batch(x, noises[k])
        eps = standard_normal_draws(len(x), latent_dim, noises[k], x, draws)  # ([K,] B, D_z)
        if world_size > 1:  # this rank's share of the global batch and of its draws
            start, end = rank_share(len(x), rank, world_size)
            x, eps = x[start:end], eps[..., start:end, :]
        return x, eps

    return inputs


def train_vae(config: VAEConfig, run: RunDir, *, resume: bool = False, protocol: Protocol | None = None,
              stop: Callable[[], bool] | None = None, show_progress: bool | None = None,
              say: Callable[[str], None] | None = None) -> list[dict[str, Any]] | dict[int, list[dict[str, Any]]]:
    """Train (or, with ``resume``, continue) the VAE of ``config`` into ``run``; return the metric records (by seed
    for a config with several seeds, trained as replicas into RUN/seed=N).

    ``protocol`` defaults to the data ``config`` names. ``stop`` is polled before every step; when it returns True
    the state is saved and :class:`TrainingInterrupted` is raised; without ``stop``, Ctrl-C does that (a second
    Ctrl-C aborts). ``say`` gets the one-line notes (default: stderr, rank 0). Raises
    :class:`mnistgen.errors.NonFiniteLossError` if the ELBO becomes NaN or infinite."""
    say = say or say_on_main_process
    device = training_device(config)
    with ExitStack() as held:  # one process per run folder (rank 0 holds it)
        checkpoints = claim_runs(held, run, resume, "vae", config, say, metric_keys(config))
        with training_context(config.threads, stop, config.flush_denormals, say) as stop_requested:
            histories = _train(config, run, checkpoints, protocol, device, stop_on_every_rank(stop_requested),
                               show_progress, say)
    return dict(zip(replica_seeds(config), histories, strict=True)) if is_replicated(config) else histories[0]


def _train(config: VAEConfig, run: RunDir, checkpoints: list[dict[str, Any] | None], protocol: Protocol | None,
           device: torch.device, stop: Callable[[], bool], show_progress: bool | None,
           say: Callable[[str], None]) -> list[list[dict[str, Any]]]:
    keys = metric_keys(config)
    with ranks_agree():
        runs, replicas = ReplicaRuns(run, config, COMMAND), []
        for seed in replica_seeds(config):
            order = seed_everything(seed)  # also seeds the global RNG that initialises the weights
            model = vae_model.build_model(config, device)  # the model and the optimizer that ``models`` defines
            optimizer = vae_model.make_optimizer(model, config)
            noise = torch.Generator(device=device).manual_seed(stream_seed(seed, NOISE_STREAM))
            runs.add(seed, {"model": model, "optimizer": optimizer}, {"order": order, "noise": noise}, "step_elbos")
            replicas.append(Replica({"model": model}, {"model": optimizer}))
        # the same models and settings for every replica: one choice, before any file is written ("native" may refuse)
        choice = choose_vae_accelerator(replicas[0].modules["model"], replicas[0].optimizers["model"], config, device)
        note_choice("VAE", {"": choice}, say)
        position = runs.restore(checkpoints, say)
    if position is None:  # nothing left to train
        return runs.histories(keys, say)
    epochs_done, start_step, saved_values, seconds_before = position
    if protocol is None:  # each machine's first process first: a download happens once
        protocol = main_rank_first(lambda: load_protocol(config.protocol, load_raw(config.data),
                                                         config.validation_size))
    with ranks_agree():
        if protocol.train_images.dim() != 2:
            raise MnistgenError(f"protocol {protocol.name!r} has no flat images; the VAE trains on hw or full")
        check_global_batch(config.batch_size, len(protocol.train_images), drop_last=False)
    histories = runs.histories(keys, say, epochs_done) if epochs_done else [[] for _ in replicas]
    runs.start("vae", epochs_done, {**protocol.provenance, "dynamic_binarization": protocol.dynamic_binarization})
    engine = vae_engine(replicas, config, device, choice, say)  # after the restore: an accelerator copies the state

    dtype = next(replicas[0].modules["model"].parameters()).dtype
    data = protocol.to(device)  # moved once; every batch is gathered from these tensors
    train_images, eval_images = data.train_images.to(dtype), data.eval_images.to(dtype)
    draws, size = vae_model.draws_per_image(config), config.batch_size
    steps = num_batches(len(train_images), size, drop_last=False)
    seeds = "" if len(replicas) == 1 else f" ({len(replicas)} seeds)"
    bar = progress(total=steps * (config.epochs - epochs_done) - start_step, description="vae",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            lr = learning_rate(config, epoch)
            for optimizer in engine.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            bar.set_description(f"vae epoch {epoch + 1}/{config.epochs}{seeds}")
            order_states = [state.generators["order"].get_state() for state in runs.states]
            orders = [epoch_order(len(train_images), size, state.generators["order"], device)
                      for state in runs.states]
            inputs = step_inputs(train_images, orders, [state.generators["noise"] for state in runs.states], size,
                                 config.latent_dim, draws, data.dynamic_binarization)
            step_elbos = torch.zeros(len(replicas), steps, device=device, dtype=dtype)
            if start_step:  # the steps an interrupted run took in this epoch
                step_elbos[:, :start_step] = torch.stack(saved_values).to(device)
            started = time.perf_counter()
            done = take_steps(engine, start_step, steps, inputs, step_elbos, stop, bar)
            sum_over_ranks(step_elbos[:, start_step:done])  # the global batches' sums (done: the same on every rank)
            train_seconds = seconds_before + time.perf_counter() - started
            elbos = runs.end_steps(epoch=epoch, done=done, steps=steps, step_values=step_elbos,
                                   value_names=("the training ELBO",), order_states=order_states,
                                   seconds=train_seconds)  # (R, steps, 1)
            records = []
            for k, replica in enumerate(replicas):
                evaluation = torch.Generator(device=device)
                evaluation.manual_seed(stream_seed(runs.states[k].config.seed, EVAL_STREAM, epoch))
                eval_elbo = float(held_out_elbo(engine, k, replica.modules["model"], eval_images,
                                                config.objective == "analytic", evaluation).mean())
                records.append({
                    "epoch": epoch + 1, "train_elbo": float(elbos[k].sum()) / len(train_images),
                    f"{data.eval_name}_elbo": eval_elbo, "lr": lr, "train_seconds": train_seconds,
                    "seconds": seconds_before + time.perf_counter() - started, "trained_by": engine.name,
                    **training_value(config)})
            runs.record_epoch(records)
            for history, record in zip(histories, records, strict=True):
                history.append(record)
            bar.set_postfix(train=f"{records[0]['train_elbo']:.2f}",
                            **{data.eval_name: f"{records[0][f'{data.eval_name}_elbo']:.2f}"})
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return histories
