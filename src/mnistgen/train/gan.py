"""Training the GAN of SPEC §3: the one loop, :func:`train_gan`, for R >= 1 replicas (seeds); returns its history.
Each step is :func:`mnistgen.models.gan.train_step`, taken by :func:`mnistgen.accelerate.gan.gan_engine`; after each
epoch a line of RUN/metrics.jsonl and RUN/checkpoint.pt, and every ``grid_every`` epochs an 8x8 grid of G's images
for one fixed batch of noise (RUN/grids/; with ``--ema-decay`` the average's, and G's own in RUN/grids/raw/)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch

from ..accelerate.engines import Replica
from ..accelerate.gan import choose_gan_calls, gan_engine
from ..config import GANConfig, is_replicated, replica_seeds
from ..data.batches import epoch_order, num_batches
from ..device import seed_everything, stream_seed
from ..distributed import is_main_process, rank_and_size, rank_share, ranks_agree, stop_on_every_rank, sum_over_ranks
from ..distributions import sample_uniform_noise
from ..errors import MnistgenError, TrainingInterrupted
from ..models import gan as gan_model
from ..models.gan import AVERAGE, IMAGE_SHAPE, SLOW, STATS, weight_average
from ..progress import progress
from ..runs import GRID_SIDE, RunDir
from .common import (
    ReplicaRuns,
    claim_runs,
    keep_freed_memory,
    say_on_main_process,
    take_steps,
    training_context,
    training_device,
)

NOISE_STREAM = 1  # key of the generator that draws the training noise z
GRID_STREAM = 2  # key of the generator of the grid's fixed noise
AUGMENT_STREAM = 3  # key of the generator that draws the plans of --translate and --cutout
COMMAND = "mnistgen gan train"

__all__ = ["TrainingInterrupted", "train_gan"]


def grid_noise(config: GANConfig, device: torch.device) -> torch.Tensor:
    """The fixed (64, zdim) noise of the progress grids: the same for every epoch, device and resume."""
    cpu = torch.Generator().manual_seed(stream_seed(config.seed, GRID_STREAM))
    return sample_uniform_noise(GRID_SIDE * GRID_SIDE, config.zdim, cpu).to(device)


def check_images(images: torch.Tensor, config: GANConfig) -> None:
    """The training images must be (N, 1, 28, 28) and at least one batch."""
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise MnistgenError(f"the GAN trains on (N, 1, 28, 28) images; got shape {tuple(images.shape)}")
    if len(images) < config.batch_size:
        raise MnistgenError(f"--batch-size {config.batch_size} is more than the {len(images)} training images "
                            "(the last partial batch is dropped, so no step would be taken)")


def step_inputs(images: torch.Tensor, orders: Sequence[torch.Tensor], noises: Sequence[torch.Generator],
                batch_size: int, zdim: int, dtype: torch.dtype,
                r1_weight: Callable[[int], tuple[torch.Tensor, ...]] = lambda step: (),
                augment: tuple[gan_model.Augmentation, Sequence[torch.Generator]] | None = None,
                ema_decay: Callable[[int], tuple[torch.Tensor, ...]] = lambda step: (),
                lookahead_sync: Callable[[int], tuple[torch.Tensor, ...]] = lambda step: ()
                ) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    """``inputs(k, s)``: replica k's step s, its real images (B, 1, 28, 28) in the epoch's ``orders[k]`` and z (B,
    zdim) drawn from ``noises[k]``; with ``augment`` (the augmentation, each replica's generator), the plan (B,
    D_CALLS, 4) drawn from replica k's; under torchrun this rank's share of each (every rank draws the whole batch);
    then ``ema_decay(s)`` (:func:`mnistgen.models.gan.ema_decays`), ``r1_weight(s)``
    (:func:`mnistgen.models.gan.r1_weights`) and ``lookahead_sync(s)`` (:func:`mnistgen.models.gan.lookahead_syncs`)."""
    rank, world_size = rank_and_size()

    def inputs(k: int, step: int) -> tuple[torch.Tensor, ...]:
        real = images.index_select(0, orders[k][step * batch_size:(step + 1) * batch_size])  # (B, 1, 28, 28)
        z = sample_uniform_noise(len(real), zdim, noises[k]).to(dtype)  # (B, zdim)
        drawn = (real, z) if augment is None else (real, z, augment[0].draw(len(real), augment[1][k]))
        if world_size > 1:  # this rank's share of the global batch and of its draws
            start, end = rank_share(len(real), rank, world_size)
            drawn = tuple(tensor[start:end] for tensor in drawn)
        return *drawn, *ema_decay(step), *r1_weight(step), *lookahead_sync(step)

    return inputs


def train_gan(config: GANConfig, images: torch.Tensor, run: RunDir, *, resume: bool = False,
              provenance: dict[str, Any] | None = None, stop: Callable[[], bool] | None = None,
              show_progress: bool | None = None, say: Callable[[str], None] | None = None
              ) -> list[dict[str, Any]] | dict[int, list[dict[str, Any]]]:
    """Train (or, with ``resume``, continue) the GAN of ``config`` on ``images``, (N, 1, 28, 28) float32 in [0, 1],
    into ``run``; return the records, as :func:`mnistgen.train.vae.train_vae` does. provenance: RUN/data.json."""
    say = say or say_on_main_process
    device = training_device(config, lambda: check_images(images, config))
    keep_freed_memory()  # reuse freed tensors' memory: no page faults every step (same results)
    with ExitStack() as held:  # one process per run folder (rank 0 holds it)
        checkpoints = claim_runs(held, run, resume, "gan", config, say, STATS)
        with training_context(config.threads, stop, config.flush_denormals, say) as stop_requested:
            histories = _train(config, images, run, checkpoints, provenance, device,
                               stop_on_every_rank(stop_requested), show_progress, say)
    return dict(zip(replica_seeds(config), histories, strict=True)) if is_replicated(config) else histories[0]


def _train(config: GANConfig, images: torch.Tensor, run: RunDir, checkpoints: list[dict[str, Any] | None],
           provenance: dict[str, Any] | None, device: torch.device, stop: Callable[[], bool],
           show_progress: bool | None, say: Callable[[str], None]) -> list[list[dict[str, Any]]]:
    with ranks_agree():
        runs, replicas, chosen = ReplicaRuns(run, config, COMMAND), [], None
        augmentation = gan_model.augmentation(config)
        for seed in replica_seeds(config):
            order = seed_everything(seed)  # also seeds the global RNG that initialises the weights
            generator, discriminator = gan_model.build_models(config, device)  # what ``models`` defines
            optimizer_g, optimizer_d = gan_model.make_optimizers(generator, discriminator, config)
            if chosen is None:  # the same models and settings for every replica: one choice, before any file is
                chosen = choose_gan_calls(generator, discriminator, optimizer_g, optimizer_d, config, device, say)
            chosen.prepare(generator, discriminator, device)  # before any optimizer state: the weights' layout
            averages = {} if config.ema_decay is None else {AVERAGE: weight_average(generator)}  # G's initial
            if config.lookahead_steps is not None:  # the initial weights of both
                averages.update(zip(SLOW, map(weight_average, (generator, discriminator)), strict=True))
            noise = torch.Generator(device=device).manual_seed(stream_seed(seed, NOISE_STREAM))
            streams = {"order": order, "noise": noise}
            if augmentation is not None:  # its own stream: z is drawn as without it
                streams["augment"] = torch.Generator(device=device).manual_seed(stream_seed(seed, AUGMENT_STREAM))
            stateful = {"generator": generator, "discriminator": discriminator, "optimizer_g": optimizer_g,
                        "optimizer_d": optimizer_d}
            runs.add(seed, {**stateful, **averages}, streams, "step_stats")
            replicas.append(Replica({"generator": generator, "discriminator": discriminator},
                                    {"generator": optimizer_g, "discriminator": optimizer_d}, averages))
        position = runs.restore(checkpoints, say)
    if position is None:  # nothing left to train
        return runs.histories(STATS, say)
    epochs_done, start_step, saved_values, seconds_before = position
    histories = runs.histories(STATS, say, epochs_done) if epochs_done else [[] for _ in replicas]
    runs.start("gan", epochs_done, provenance)
    g_dtype = next(replicas[0].modules["generator"].parameters()).dtype  # every replica's
    fixed_noise = [grid_noise(state.config, device).to(g_dtype) for state in runs.states]
    if all(checkpoint is None for checkpoint in checkpoints):
        for state, replica, noise in zip(runs.states, replicas, fixed_noise, strict=True):
            save_grid(state.run, 0, replica, noise)  # the untrained generator
        runs.save(epoch=0)
    engine = gan_engine(replicas, config, device, chosen, say)  # after the restore: a graph copies the state

    images = images.to(device, next(replicas[0].modules["discriminator"].parameters()).dtype)  # moved once
    size = config.batch_size
    steps = num_batches(len(images), size, drop_last=True)
    seeds = "" if len(replicas) == 1 else f" ({len(replicas)} seeds)"
    bar = progress(total=steps * max(config.epochs - epochs_done, 0) - start_step, description="gan",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            bar.set_description(f"gan epoch {epoch + 1}/{config.epochs}{seeds}")
            order_states = [state.generators["order"].get_state() for state in runs.states]
            orders = [epoch_order(len(images), size, state.generators["order"], device, drop_last=True)
                      for state in runs.states]
            inputs = step_inputs(images, orders, [state.generators["noise"] for state in runs.states], size,
                                 config.zdim, g_dtype, gan_model.r1_weights(config, epoch * steps, images),
                                 None if augmentation is None else
                                 (augmentation, [state.generators["augment"] for state in runs.states]),
                                 gan_model.ema_decays(config, epoch * steps, images),
                                 gan_model.lookahead_syncs(config, epoch * steps, images))
            step_stats = torch.zeros(len(replicas), steps, len(STATS), device=device)
            if start_step:  # the steps an interrupted run took in this epoch
                step_stats[:, :start_step] = torch.stack(saved_values).to(device)
            started = time.perf_counter()
            done = take_steps(engine, start_step, steps, inputs, step_stats, stop, bar)
            sum_over_ranks(step_stats[:, start_step:done], mean=True)  # the global batches' values
            seconds = seconds_before + time.perf_counter() - started
            stats = runs.end_steps(epoch=epoch, done=done, steps=steps, step_values=step_stats, value_names=STATS,
                                   order_states=order_states, seconds=seconds)  # (R, steps, 4)
            means = stats.mean(dim=1).tolist()  # (R, 4)
            for k in constant_discriminators(stats):  # said once an epoch while it lasts: G no longer learns
                say(f"mnistgen: note: epoch {epoch + 1}: {runs.label(k, 'D')} gave real and generated images the same "
                    f"probability, {means[k][2]:.3f}, at every step: it is a constant (its ReLUs are dead) and G "
                    "gets no gradient from it (docs/TRAINING.md, R1)")
            if epoch + 1 == config.epochs or (epoch + 1) % config.grid_every == 0:
                for state, replica, noise in zip(runs.states, replicas, fixed_noise, strict=True):
                    save_grid(state.run, epoch + 1, replica, noise)
            records = [{"epoch": epoch + 1, **dict(zip(STATS, values, strict=True)), "seconds": seconds,
                        "trained_by": engine.name} for values in means]
            runs.record_epoch(records)
            for history, record in zip(histories, records, strict=True):
                history.append(record)
            bar.set_postfix(d_loss=f"{means[0][0]:.3f}", g_loss=f"{means[0][1]:.3f}")
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return histories


def constant_discriminators(stats: torch.Tensor) -> list[int]:
    """The replicas whose D(x) and D(G(z)) were the same to the last bit at each of the epoch's steps; stats: (R,
    steps, 4), :data:`STATS`. Where D's every ReLU is dead, its logit is its last bias whatever the image."""
    return torch.nonzero((stats[:, :, 2] == stats[:, :, 3]).all(dim=1)).flatten().tolist()


@torch.no_grad()
def save_grid(run: RunDir, epoch: int, replica: Replica, noise: torch.Tensor) -> None:
    """G's 64 images for the fixed noise, saved as epoch ``epoch``'s grid (rank 0); with a moving average of G's
    weights, the average's, and G's own in RUN/grids/raw/."""
    if not is_main_process():
        return
    average = replica.averages.get(AVERAGE)
    if average is not None:
        run.save_grid(epoch, average(noise)[:, 0].float().cpu().numpy())
    run.save_grid(epoch, replica.modules["generator"](noise)[:, 0].float().cpu().numpy(), raw=average is not None)
