"""Training the GAN of SPEC §3: one plain loop, :func:`train_gan`, that returns its history.

Per batch (:func:`train_step`): draw z ~ U[-1, 1]^zdim, compute G(z) once, take one Adam step of D on the
real batch and G(z) (binary cross-entropy towards 1 on real and 0 on generated images), then one Adam step
of G on the non-saturating loss -log D(G(z)) with the D just updated. G(z) is computed once: D's step does
not touch G, so the G step can reuse it (its graph is kept; D's step only sees it detached). After each
epoch one line goes to RUN/metrics.jsonl and RUN/checkpoint.pt is replaced atomically; an 8x8 grid of G's
images for one fixed batch of noise is saved at epoch 0, every ``grid_every`` epochs and at the end
(RUN/grids/).

Training-only options (the networks stay SPEC §3's): ``betas`` are both Adams' (B1, B2); ``ema_decay`` keeps an
exponential moving average of G's weights (:func:`update_ema` after each G step, starting from G's initial weights)
in a copy of G, saved in the checkpoint as "generator_ema"; the grids are then the average's, and G's own go to
RUN/grids/raw/.

The step calls the modules themselves (:data:`REFERENCE`): ``generator(z)``, ``discriminator(images)``.
Where an accelerator applies to a network as it is (:mod:`mnistgen.accelerate.gan`: mnistgen's C kernels
on CPU, or PyTorch-only rewrites), it replaces that network's calls with the same function; the losses,
autograd and Adam stay. ``--cpu-kernels`` chooses, and each metrics line records ``trained_by``.

Randomness: one CPU generator orders the batches, one generator on the device draws z, and the grid's
fixed noise comes from a third seeded stream. Their states are in every checkpoint, so ``--resume``
ends with the same weights as an uninterrupted run, whether the run stopped between epochs or (Ctrl-C)
in the middle of one.

Under torchrun (:mod:`mnistgen.distributed`) ``batch_size`` is the global batch: every rank draws the same
order and, per step, the same z for the whole batch, and trains on its equal slice of the images and of z; the
gradients are averaged over the ranks before each Adam step, the step values averaged once per epoch, the stop
request combined before each step, and only rank 0 reads and writes the run folder (the others receive the
checkpoint from it). So N processes take the steps of one process to float rounding.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..accelerate import Choice, note_choice
from ..accelerate.gan import DiscriminatorCalls, GraphGANStep, check_gan_graph, choose_gan_accelerators
from ..config import GANConfig, is_replicated, parse_betas, to_dict, validate
from ..data.batches import num_batches, shuffled_batches
from ..device import resolve_device, seed_everything, stream_seed
from ..distributed import (
    check_device,
    check_global_batch,
    from_main_rank,
    rank_share,
    ranks_agree,
    stop_on_every_rank,
    sum_over_ranks,
)
from ..distributions import sample_uniform_noise
from ..errors import MnistgenError
from ..files import write_json
from ..losses import discriminator_loss, generator_loss
from ..models.gan import IMAGE_SHAPE, STATS, Discriminator, Generator
from ..progress import progress
from ..runs import GRID_SIDE, RunDir, is_main_process
from .common import (
    RunState,
    TrainingInterrupted,
    claim_run,
    distributed_rank_and_size,
    end_steps,
    epochs_left,
    keep_freed_memory,
    record_epoch,
    say_on_main_process,
    synchronize_gradients,
    training_context,
)

NOISE_STREAM = 1  # key of the generator that draws the training noise z
GRID_STREAM = 2  # key of the generator of the grid's fixed noise
RESUMABLE_FIELDS = ("epochs", "grid_every", "device", "threads", "cpu_kernels", "flush_denormals")  # may change:
# the same mathematics
COMMAND = "mnistgen gan train"

__all__ = ["TrainingInterrupted", "train_gan", "train_epoch", "train_step", "build_models", "make_optimizers",
           "update_ema", "weight_average"]


# --------------------------------------------------------------------------- models and noise


def build_models(config: GANConfig, device: torch.device) -> tuple[Generator, Discriminator]:
    """G and D initialised per SPEC §3 from the global RNG (seeded by the caller), on ``device``."""
    return Generator(config.zdim).to(device), Discriminator().to(device)


def make_optimizers(generator: nn.Module, discriminator: nn.Module,
                    config: GANConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for each network (SPEC: lr 2e-4 each, PyTorch's betas and eps), with ``config.lr_g`` / ``lr_d`` and
    ``config.betas``, as one fused kernel where the device has it; returns (for G, for D)."""
    fused = next(generator.parameters()).device.type in ("cpu", "cuda", "mps")
    betas = parse_betas(config.betas)
    return (torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=betas, fused=fused),
            torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=betas, fused=fused))


def weight_average(generator: nn.Module) -> nn.Module:
    """A copy of ``generator`` to hold the moving average of its weights (``--ema-decay``), starting from its
    present weights, in their memory layout; its parameters take no gradients."""
    return copy.deepcopy(generator).requires_grad_(False)


@torch.no_grad()
def update_ema(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float) -> None:
    """ema = decay * ema + (1 - decay) * w for each pair of tensors (same shapes, device and dtype), in place."""
    ema_params = list(ema_params)
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, list(params), alpha=1.0 - decay)


def grid_noise(config: GANConfig, device: torch.device) -> torch.Tensor:
    """The fixed (64, zdim) noise of the progress grids: the same for every epoch, device and resume."""
    cpu = torch.Generator().manual_seed(stream_seed(config.seed, GRID_STREAM))
    return sample_uniform_noise(GRID_SIDE * GRID_SIDE, config.zdim, cpu).to(device)


# --------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class GANCalls:
    """How a step computes G(z) and D's logits: the modules' own calls (:data:`REFERENCE`) or accelerators'."""

    generate: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (G, z (B, zdim)) -> images (B, 1, 28, 28)
    discriminate: DiscriminatorCalls  # D's logits (B, 1) for D's step (real, generated) and for G's step
    trained_by: str = "G reference, D reference"  # what the metrics record


def _call_generator(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return generator(z)


def _call_discriminator_twice(discriminator: nn.Module, real: torch.Tensor,
                              fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return discriminator(real), discriminator(fake)


def _call_discriminator(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    return discriminator(fake)


REFERENCE = GANCalls(_call_generator, DiscriminatorCalls(_call_discriminator_twice, _call_discriminator))


def train_step(generator: nn.Module, discriminator: nn.Module, optimizer_g: torch.optim.Optimizer,
               optimizer_d: torch.optim.Optimizer, real: torch.Tensor, z: torch.Tensor,
               calls: GANCalls = REFERENCE) -> torch.Tensor:
    """One D step then one G step on the same z; returns (4,) detached on the device, in the order of
    :data:`STATS` (losses, and mean D(x) and D(G(z)) as probabilities, before the D step).

    real (B, 1, 28, 28) in [0, 1]; z (B, zdim). ``calls``: how G(z) and D's logits are computed.
    """
    fake = calls.generate(generator, z)  # (B, 1, 28, 28), computed once for both steps

    # D step: towards 1 on real and 0 on generated images; G is not reached (fake is detached)
    real_logits, fake_logits = calls.discriminate.both(discriminator, real, fake.detach())  # (B, 1) each
    d_loss = discriminator_loss(real_logits, fake_logits)
    optimizer_d.zero_grad(set_to_none=True)
    d_loss.backward()
    synchronize_gradients(discriminator)  # the mean over torchrun ranks (nothing in one process)
    optimizer_d.step()

    # G step: -log D(G(z)) with the D just updated; only G's parameters get gradients
    g_loss = generator_loss(calls.discriminate.generated(discriminator, fake))
    optimizer_g.zero_grad(set_to_none=True)
    g_loss.backward(inputs=list(generator.parameters()))
    synchronize_gradients(generator)
    optimizer_g.step()

    with torch.no_grad():
        return torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(real_logits).mean(),
                            torch.sigmoid(fake_logits).mean()])


def train_epoch(generator: nn.Module, discriminator: nn.Module, optimizer_g: torch.optim.Optimizer,
                optimizer_d: torch.optim.Optimizer, images: torch.Tensor, batches: list[torch.Tensor], *,
                noise: torch.Generator, step_stats: torch.Tensor, start_step: int = 0,
                stop: Callable[[], bool] | None = None, on_step: Callable[[], Any] | None = None,
                calls: GANCalls = REFERENCE, rank: int = 0, world_size: int = 1,
                ema: tuple[nn.Module, float] | None = None,
                captured: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> int:
    """The steps ``start_step..`` of one epoch; returns the number of steps done (fewer if ``stop()`` said so).

    images (N, 1, 28, 28) on the models' device, in D's dtype; batches: index tensors from
    ``shuffled_batches``; step_stats (len(batches), 4) receives each step's values (:data:`STATS`). ``stop``
    is polled before each step, ``on_step`` called after each. ``ema``: (the copy of G holding the moving average
    of its weights, the decay), updated by :func:`update_ema` after each step's G step. ``captured``: the same
    step captured in a CUDA graph (:class:`mnistgen.accelerate.gan.GraphGANStep`), called instead of
    :func:`train_step` where given.

    With ``world_size`` > 1 each batch is a global batch: its z is drawn whole (the same draws on every rank, and
    as one process draws them), and this rank trains on its slice ``rank`` of the images and of z
    (:func:`mnistgen.distributed.rank_share`); step_stats then receives the values over that slice.
    """
    order = torch.cat(batches).to(images.device)
    epoch_images = images.index_select(0, order)  # (n, 1, 28, 28): one gather, then contiguous slices
    ends = np.cumsum([len(b) for b in batches]).tolist()
    g_dtype = next(generator.parameters()).dtype
    if ema is not None:
        ema_params, g_params, decay = list(ema[0].parameters()), list(generator.parameters()), ema[1]
    for step in range(start_step, len(batches)):
        if stop is not None and stop():
            return step
        real = epoch_images[ends[step] - len(batches[step]):ends[step]]
        z = sample_uniform_noise(len(real), generator.zdim, noise).to(g_dtype)  # (B, zdim)
        if world_size > 1:  # this rank's share of the global batch and of its draws
            start, end = rank_share(len(real), rank, world_size)
            real, z = real[start:end], z[start:end]
        if captured is not None:
            step_stats[step] = captured(real, z)
        else:
            step_stats[step] = train_step(generator, discriminator, optimizer_g, optimizer_d, real, z, calls)
        if ema is not None:
            update_ema(ema_params, g_params, decay)
        if on_step is not None:
            on_step()
    return len(batches)


def choose_calls(generator: nn.Module, discriminator: nn.Module, config: GANConfig, device: torch.device,
                 say: Callable[[str], None] | None = None) -> GANCalls:
    """The calls a step makes under ``config.cpu_kernels``: the accelerators that apply to G and to D as they
    are, the modules' own calls for a network where none does (with one note naming the reasons).

    Call it before the optimizers hold any state: a chosen accelerator may put its module's weights in another
    memory layout (never other values)."""
    for_g, for_d = choose_gan_accelerators(generator, discriminator, config, device)
    note_choice("GAN", {"G": for_g, "D": for_d}, say)
    return GANCalls(_prepared(for_g, generator, device, REFERENCE.generate),
                    _prepared(for_d, discriminator, device, REFERENCE.discriminate), f"G {for_g.name}, D {for_d.name}")


def _prepared(choice: Choice, module: nn.Module, device: torch.device, reference: Any) -> Any:
    """The chosen accelerator's implementation, its module prepared for it; ``reference`` if none was chosen."""
    if choice.accelerator is None:
        return reference
    if choice.accelerator.prepare is not None:
        choice.accelerator.prepare(module, device)
    return choice.accelerator.implementation


# --------------------------------------------------------------------------- the loop


def check_images(images: torch.Tensor, config: GANConfig) -> None:
    """The training images must be (N, 1, 28, 28) and at least one batch."""
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise MnistgenError(f"the GAN trains on (N, 1, 28, 28) images; got shape {tuple(images.shape)}")
    if len(images) < config.batch_size:
        raise MnistgenError(f"--batch-size {config.batch_size} is more than the {len(images)} training images "
                            "(the last partial batch is dropped, so no step would be taken)")


def train_gan(config: GANConfig, images: torch.Tensor, run: RunDir, *, resume: bool = False,
              provenance: dict[str, Any] | None = None, stop: Callable[[], bool] | None = None,
              show_progress: bool | None = None, say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train (or, with ``resume``, continue) the GAN of ``config`` on ``images`` into ``run``; return the records.

    images: (N, 1, 28, 28) float32 in [0, 1] on any device (the CLI passes the "gan" protocol's 60,000
    training images; tests pass a few). provenance: written to RUN/data.json. ``stop`` is polled before
    every step; when it returns True the state is saved and :class:`TrainingInterrupted` is raised.
    Without ``stop``, Ctrl-C does that (a second Ctrl-C aborts at once). ``say`` gets the one-line note when
    a faster accelerator does not apply (default: stderr, rank 0). Raises
    :class:`mnistgen.train.common.NonFiniteLossError` if a loss becomes NaN or infinite (the checkpoint
    of the last completed epoch is kept).

    A config with several seeds (``--seeds``, ``--replicas``) trains them as replicas into RUN/seed=N
    (:func:`mnistgen.train.replicas.train_gan_replicas`) and returns their histories by seed.
    """
    if is_replicated(config):
        from .replicas import train_gan_replicas

        return train_gan_replicas(config, images, run, resume=resume, provenance=provenance, stop=stop,
                                  show_progress=show_progress, say=say)
    with ranks_agree():  # under torchrun: the same checks on every rank, an error stops them all
        validate(config)
        device = resolve_device(config.device)
        check_device(device)
        check_images(images, config)
        check_global_batch(config.batch_size)
    keep_freed_memory()  # reuse freed tensors' memory: no page faults every step (same results)
    with ExitStack() as held:  # one process per run folder (rank 0 holds it)
        checkpoint = claim_run(held, run, resume, "gan", config, RESUMABLE_FIELDS, say, STATS)
        with training_context(config.threads, stop, config.flush_denormals, say) as stop_requested:
            return _train(config, images, run, checkpoint, provenance, device, stop_on_every_rank(stop_requested),
                          show_progress, say)


def _train(config: GANConfig, images: torch.Tensor, run: RunDir, checkpoint: dict[str, Any] | None,
           provenance: dict[str, Any] | None,
           device: torch.device, stop: Callable[[], bool], show_progress: bool | None,
           say: Callable[[str], None] | None) -> list[dict[str, Any]]:
    with ranks_agree():
        order_generator = seed_everything(config.seed)  # also seeds the global RNG that initialises the weights
        generator, discriminator = build_models(config, device)
        # before any file is written ("native" may refuse) and before the optimizers (the weights' layout may change)
        calls = choose_calls(generator, discriminator, config, device, say)
        graph_reason = check_gan_graph(generator, discriminator, config, device, calls)
        if device.type == "cuda" and graph_reason is not None and config.cpu_kernels != "reference":
            (say or say_on_main_process)(f"mnistgen: note: the GAN's step is not captured in a CUDA graph: "
                                         f"{graph_reason}")
        optimizer_g, optimizer_d = make_optimizers(generator, discriminator, config)
        average = weight_average(generator) if config.ema_decay is not None else None  # G's initial weights
        noise = torch.Generator(device=device)  # the same stream on every torchrun rank: each takes its share
        noise.manual_seed(stream_seed(config.seed, NOISE_STREAM))
        state = RunState(run, config, {"generator": generator, "discriminator": discriminator,
                                       "optimizer_g": optimizer_g, "optimizer_d": optimizer_d,
                                       **({"generator_ema": average} if average is not None else {})},
                         {"order": order_generator, "noise": noise}, "step_stats")
        epochs_done, start_step, saved_stats, seconds_before, complete = 0, 0, None, 0.0, False
        if checkpoint is not None:
            epochs_done, start_step, saved_stats, seconds_before = state.restore(checkpoint)
            complete = not epochs_left(run, config, epochs_done, start_step, say)
    if complete:
        return from_main_rank(lambda: run.read_metrics(STATS, say))
    history = from_main_rank(lambda: [r for r in run.read_metrics(STATS, say) if r["epoch"] <= epochs_done]
                             if epochs_done else [])
    run.truncate_metrics(epochs_done, say=lambda line: None)  # epochs the checkpoint lacks (all on a new start)
    run.write_config(to_dict(config), kind="gan")
    if is_main_process() and provenance is not None:
        write_json(run.data, provenance)
    fixed_noise = grid_noise(config, device).to(next(generator.parameters()).dtype)
    if checkpoint is None:
        save_grid(run, 0, generator, fixed_noise, average)  # the untrained generator
        state.save(epoch=0, step=0, order_state=order_generator.get_state(), step_values=torch.zeros(0, len(STATS)),
                   seconds=0.0)

    images = images.to(device, next(discriminator.parameters()).dtype)  # moved once; batches are slices of it
    rank, world_size = distributed_rank_and_size()
    graph = None if graph_reason is not None else GraphGANStep(generator, discriminator, optimizer_g, optimizer_d,
                                                               config.batch_size, calls)  # after the restore
    trained_by = calls.trained_by if graph is None else f"cuda-graph ({calls.trained_by})"
    steps_per_epoch = num_batches(len(images), config.batch_size, drop_last=True)
    bar = progress(total=steps_per_epoch * max(config.epochs - epochs_done, 0) - start_step, description="gan",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            bar.set_description(f"gan epoch {epoch + 1}/{config.epochs}")
            order_state = order_generator.get_state()
            batches = list(shuffled_batches(len(images), config.batch_size, order_generator, drop_last=True))
            step_stats = torch.zeros(len(batches), len(STATS), device=device)
            if start_step:
                step_stats[:start_step] = saved_stats.to(device)
            started = time.perf_counter()
            done = train_epoch(generator, discriminator, optimizer_g, optimizer_d, images, batches, noise=noise,
                               step_stats=step_stats, start_step=start_step, stop=stop,
                               on_step=lambda: bar.update(1), calls=calls, rank=rank, world_size=world_size,
                               ema=None if average is None else (average, config.ema_decay),
                               captured=None if graph is None else graph.step)
            if graph is not None:
                graph.store()  # the captured Adams' state into the optimizers the checkpoint saves
            sum_over_ranks(step_stats[start_step:done], mean=True)  # the global batches' values (done: everywhere)
            seconds = seconds_before + time.perf_counter() - started
            stats = end_steps(state, epoch=epoch, done=done, steps=len(batches), step_values=step_stats,
                              value_names=STATS, order_state=order_state, seconds=seconds, command=COMMAND)
            means = stats.mean(dim=0).tolist()
            if epoch + 1 == config.epochs or (epoch + 1) % config.grid_every == 0:
                save_grid(run, epoch + 1, generator, fixed_noise, average)
            record = record_epoch(state, {"epoch": epoch + 1, **dict(zip(STATS, means, strict=True)),
                                          "seconds": seconds, "trained_by": trained_by})
            history.append(record)
            bar.set_postfix(d_loss=f"{means[0]:.3f}", g_loss=f"{means[1]:.3f}")
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return history


@torch.no_grad()
def save_grid(run: RunDir, epoch: int, generator: nn.Module, noise: torch.Tensor,
              average: nn.Module | None = None) -> None:
    """G's 64 images for the fixed noise (the module's own forward), saved as epoch ``epoch``'s grid (rank 0).

    With ``average`` (the moving average of G's weights, ``--ema-decay``) the grid is the average's images and G's
    own are saved beside it, in RUN/grids/raw/."""
    if not is_main_process():
        return
    if average is not None:
        run.save_grid(epoch, average(noise)[:, 0].float().cpu().numpy())
    run.save_grid(epoch, generator(noise)[:, 0].float().cpu().numpy(), raw=average is not None)
