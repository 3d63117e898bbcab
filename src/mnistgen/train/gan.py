"""Training the GAN of SPEC §3: one plain loop, :func:`train_gan`, that returns its history.

Per batch: draw z ~ U[-1, 1]^zdim, compute G(z) once, take one Adam step of D on the real batch and
G(z) (binary cross-entropy towards 1 on real and 0 on generated images), then one Adam step of G on
the non-saturating loss -log D(G(z)) with the D just updated. After each epoch one line goes to
RUN/metrics.jsonl and RUN/checkpoint.pt is replaced atomically; an 8x8 grid of G's images for one fixed
batch of noise is saved at epoch 0, every ``grid_every`` epochs and at the end (RUN/grids/).

Speed without changing the mathematics (bench/gan_speed.py measures it; tests/test_gan_speed.py shows
each point gives the same values and gradients as the classic loop of bench/gan_baseline.py):

- G(z) is computed once per batch. The classic recipe computes it again for the G step, but D's step
  does not touch G, so the second G(z) is the same tensor: the G step reuses the first one (its graph
  is kept; the D step only sees it detached).
- D scores the real and the generated batch in one pass over both (no layer of D mixes the images of a
  batch, so each logit is what a separate pass would give).
- The G step back-propagates into G's parameters only: D's parameter gradients, which the classic loop
  computes there and then throws away, are never formed.
- Batches are contiguous slices of the epoch's images, gathered once in the order that
  :func:`mnistgen.data.batches.shuffled_batches` decides (no DataLoader, no per-image Python).
- Each of G's "nearest 2x upsampling, then 3x3 convolution" is one stride-2 transposed convolution with a
  4x4 kernel summed from the 3x3 weights (:func:`mnistgen.models.gan.generate`): fewer multiply-adds, no
  upsampled map in memory.
- On CPU, G's and D's convolutions run channels-last, oneDNN's fastest layout for them (same values).
- On CPU, D and G after its Linear run in mnistgen's own C kernels where a C compiler is available
  (:mod:`mnistgen.kernels.gan`, ``--cpu-kernels``): D's 1- to 8-channel layers fill no vector register in
  a library's kernels, eight images side by side do. The same functions, tested to float32 rounding.
- The process keeps the memory of freed tensors for reuse (:func:`mnistgen.train.common.keep_freed_memory`)
  instead of returning it to the system and page-faulting it back every step.
- The losses and D's outputs of every step stay on the device until the end of the epoch: no host
  synchronisation per step on a GPU. The NaN guard reads them then, and names the first bad step.

Randomness: one CPU generator orders the batches, one generator on the device draws z, and the grid's
fixed noise comes from a third seeded stream. Their states are in every checkpoint, so ``--resume``
ends with the same weights as an uninterrupted run, whether the run stopped between epochs or (Ctrl-C)
in the middle of one.

Ready for torchrun: batches are sharded by rank in ``shuffled_batches``, gradients are averaged over
ranks before each Adam step, and only rank 0 writes (through :class:`mnistgen.runs.RunDir`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import GANConfig, to_dict
from ..data.batches import num_batches, shuffled_batches
from ..device import resolve_device, seed_everything
from ..errors import MnistgenError
from ..imaging import save_png, tile
from ..kernels.gan import TORCH_KERNELS, GANForward, choose_gan_forward, torch_discriminate
from ..losses import discriminator_loss, generator_loss
from ..models.gan import Discriminator, Generator
from ..runs import RunDir, atomic_write, is_main_process, write_json
from .common import (
    check_finite,
    distributed_rank_and_size,
    generator_states,
    keep_freed_memory,
    progress,
    refuse_changed_settings,
    restore_generators,
    sigint_requests_stop,
    stream_seed,
    synchronize_gradients,
    torch_threads,
)

NOISE_STREAM = 1  # key of the generator that draws the training noise z
GRID_STREAM = 2  # key of the generator of the grid's fixed noise
SAMPLE_STREAM = 3  # key of the generator of ``mnistgen gan sample`` (with the sample seed)
GRID_SIDE = 8  # the progress grids are 8x8 images
GRID_PNG_SCALE = 3  # grid PNGs are enlarged 3x (nearest) so a digit is 84 screen pixels
GRID_PADDING = 2
FIGURE_DPI = 100
SAMPLE_BATCH = 1000  # images generated per forward pass by :func:`sample_images`
STATS = ("d_loss", "g_loss", "d_real", "d_fake")  # per-step values, in this order in the step tensor
# may change on --resume: the same mathematics
RESUMABLE_FIELDS = ("epochs", "grid_every", "device", "threads", "cpu_kernels")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a completed step; the state was saved. ``str()`` says how to continue."""


# --------------------------------------------------------------------------- models and noise


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """channels-last on CPU, where oneDNN runs G's and D's convolutions faster (docs/BENCHMARKS.md); else the
    default. The parameters' values and state_dict keys are the same in either layout."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def build_models(config: GANConfig, device: torch.device) -> tuple[Generator, Discriminator]:
    """G and D initialised per SPEC §3 from the global RNG (seeded by the caller), on ``device``."""
    generator = Generator(config.zdim).to(device, memory_format=preferred_memory_format(device))
    discriminator = Discriminator().to(device, memory_format=preferred_memory_format(device))
    return generator, discriminator


def make_optimizers(generator: Generator, discriminator: Discriminator,
                    config: GANConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for each network (SPEC: lr 2e-4 each, PyTorch's betas and eps), as one fused kernel where the
    device has it (the same update, tests/test_gan_speed.py); returns (for G, for D)."""
    fused = next(generator.parameters()).device.type in ("cpu", "cuda", "mps")
    return (torch.optim.Adam(generator.parameters(), lr=config.lr_g, fused=fused),
            torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, fused=fused))


def uniform_noise(count: int, zdim: int, generator: torch.Generator) -> torch.Tensor:
    """(count, zdim) draws of U[-1, 1] on the generator's device."""
    return torch.rand((count, zdim), generator=generator, device=generator.device).mul_(2.0).sub_(1.0)


def grid_noise(config: GANConfig, device: torch.device) -> torch.Tensor:
    """The fixed (64, zdim) noise of the progress grids: the same for every epoch, device and resume."""
    cpu = torch.Generator().manual_seed(stream_seed(config.seed, GRID_STREAM))
    return uniform_noise(GRID_SIDE * GRID_SIDE, config.zdim, cpu).to(device)


# --------------------------------------------------------------------------- one step


def discriminator_step(discriminator: Discriminator, optimizer: torch.optim.Optimizer, real: torch.Tensor,
                       fake: torch.Tensor, discriminate: Callable[..., torch.Tensor] = torch_discriminate
                       ) -> torch.Tensor:
    """One Adam step of D on a real batch (B, 1, 28, 28) and a generated one; G is never reached.

    ``discriminate(discriminator, images, parameter_gradients)`` computes D's logits (a :class:`GANForward`'s).
    Returns (3,) detached on the device: D's loss, mean D(x) and mean D(G(z)) (probabilities, before the step).
    """
    logits = discriminate(discriminator, torch.cat([real, fake.detach()]))  # (2B, 1): one pass over both batches
    real_logits, fake_logits = logits[:len(real)], logits[len(real):]
    loss = discriminator_loss(real_logits, fake_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    synchronize_gradients(discriminator)
    optimizer.step()
    with torch.no_grad():
        return torch.stack([loss, torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()])


def generator_step(discriminator: Discriminator, optimizer: torch.optim.Optimizer, generator: Generator,
                   fake: torch.Tensor, discriminate: Callable[..., torch.Tensor] = torch_discriminate) -> torch.Tensor:
    """One Adam step of G on -log D(G(z)); ``fake`` = G(z) with its graph. D's parameters are left as they are
    (their gradients are not even computed). Returns G's loss (0-d, detached, on the device)."""
    loss = generator_loss(discriminate(discriminator, fake, False))
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=list(generator.parameters()))
    synchronize_gradients(generator)
    optimizer.step()
    return loss.detach()


def train_step(generator: Generator, discriminator: Discriminator, optimizer_g: torch.optim.Optimizer,
               optimizer_d: torch.optim.Optimizer, real: torch.Tensor, z: torch.Tensor,
               forward: GANForward = TORCH_KERNELS) -> torch.Tensor:
    """One D step then one G step on the same z; returns (4,) on the device, in the order of :data:`STATS`.

    ``forward``: whose kernels compute G(z) and D (mnistgen.kernels.gan; the same functions either way)."""
    fake = forward.generate(generator, z)  # (B, 1, 28, 28), computed once for both steps
    d_loss, d_real, d_fake = discriminator_step(discriminator, optimizer_d, real, fake, forward.discriminate)
    g_loss = generator_step(discriminator, optimizer_g, generator, fake, forward.discriminate)
    return torch.stack([d_loss, g_loss, d_real, d_fake])


def train_epoch(generator: Generator, discriminator: Discriminator, optimizer_g: torch.optim.Optimizer,
                optimizer_d: torch.optim.Optimizer, images: torch.Tensor, batches: list[torch.Tensor], *,
                noise: torch.Generator, step_stats: torch.Tensor, start_step: int = 0,
                stop: Callable[[], bool] | None = None, on_step: Callable[[], Any] | None = None,
                forward: GANForward = TORCH_KERNELS) -> int:
    """The steps ``start_step..`` of one epoch; returns the number of steps done (fewer if ``stop()`` said so).

    images (N, 1, 28, 28) on the models' device; batches: index tensors from ``shuffled_batches``;
    step_stats (len(batches), 4) receives each step's values (:data:`STATS`). ``stop`` is polled before
    each step, ``on_step`` called after each.
    """
    order = torch.cat(batches).to(images.device)
    epoch_images = images.index_select(0, order)  # (n, 1, 28, 28): one gather, then contiguous slices
    ends = np.cumsum([len(b) for b in batches]).tolist()
    for step in range(start_step, len(batches)):
        if stop is not None and stop():
            return step
        real = epoch_images[ends[step] - len(batches[step]):ends[step]]
        z = uniform_noise(len(real), generator.zdim, noise)
        step_stats[step] = train_step(generator, discriminator, optimizer_g, optimizer_d, real, z, forward)
        if on_step is not None:
            on_step()
    return len(batches)


# --------------------------------------------------------------------------- grids


def grids_dir(run: RunDir) -> Path:
    return run.path / "grids"


def grid_paths(run: RunDir, epoch: int) -> tuple[Path, Path]:
    """RUN/grids/epoch_NNN.png (the 8x8 picture) and .npy (its 64 images, float32 (64, 28, 28))."""
    stem = grids_dir(run) / f"epoch_{epoch:03d}"
    return stem.with_suffix(".png"), stem.with_suffix(".npy")


def saved_grid_epochs(run: RunDir) -> list[int]:
    """Epochs with a saved grid (its .npy), ascending."""
    epochs = []
    for path in grids_dir(run).glob("epoch_*.npy"):
        number = path.stem.removeprefix("epoch_")
        if number.isdigit():
            epochs.append(int(number))
    return sorted(epochs)


@torch.no_grad()
def save_grid(run: RunDir, epoch: int, generator: Generator, noise: torch.Tensor) -> None:
    """G's 64 images for the fixed noise, as RUN/grids/epoch_NNN.png (8x8, enlarged) and .npy (rank 0 only)."""
    if not is_main_process():
        return
    images = generator(noise)[:, 0].float().cpu().numpy()  # (64, 28, 28) in (0, 1)
    png, array = grid_paths(run, epoch)
    save_png(png, tile(images, GRID_SIDE, GRID_SIDE, padding=GRID_PADDING), scale=GRID_PNG_SCALE)
    atomic_write(array, lambda handle: np.save(handle, images.astype(np.float32)))


def grid_due(epoch: int, config: GANConfig) -> bool:
    return epoch == 0 or epoch % config.grid_every == 0 or epoch == config.epochs


def load_grid(run: RunDir, epoch: int) -> np.ndarray:
    """The 64 images of the grid saved at ``epoch``: (64, 28, 28) float32."""
    _, array = grid_paths(run, epoch)
    try:
        return np.load(array, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MnistgenError(f"{array}: not a readable grid ({type(exc).__name__})") from None


def _save_figure(path: Path, figure) -> None:
    """A matplotlib Figure as a PNG file, written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def write_figures(run: RunDir, epochs: list[int]) -> list[Path]:
    """RUN/figures/progress.png (the grids of ``epochs`` side by side) and, once an epoch is done, training.png."""
    from ..plots.gan import progress_figure, training_figure

    available = saved_grid_epochs(run)
    missing = [epoch for epoch in epochs if epoch not in available]
    if missing:
        listed = ", ".join(str(e) for e in available) or "none yet"
        raise MnistgenError(f"{run.path}: no saved grid for epoch(s) {', '.join(map(str, missing))}; "
                            f"grids exist for epochs {listed}")
    written = [run.figures / "progress.png"]
    _save_figure(written[0], progress_figure(epochs, [load_grid(run, epoch) for epoch in epochs], GRID_SIDE))
    records = run.read_metrics()
    if records:
        written.append(run.figures / "training.png")
        _save_figure(written[1], training_figure(records))
    return written


# --------------------------------------------------------------------------- the loop


def validate_gan_config(config: GANConfig) -> None:
    if config.threads < 0:
        raise MnistgenError(f"--threads must be 0 (torch's default) or a positive integer, got {config.threads}")


def _resume_config(run: RunDir, config: GANConfig) -> None:
    saved = run.read_config_as("gan", GANConfig, "a GAN run")
    # The data may be found elsewhere now (another --data-dir); only the dataset must stay the same.
    other_dataset = ("dataset",) if saved.data.dataset != config.data.dataset else ()
    refuse_changed_settings(run.path, saved, config, (*RESUMABLE_FIELDS, "data"), other_dataset)


def _checkpoint(models, optimizers, generators, config, epoch, step, order_state, step_stats, seconds):
    """Everything needed to continue exactly: weights, Adam's moments, generator states and the epoch position."""
    generator, discriminator = models
    optimizer_g, optimizer_d = optimizers
    return {
        "generator": generator.state_dict(),
        "discriminator": discriminator.state_dict(),
        "optimizer_g": optimizer_g.state_dict(),
        "optimizer_d": optimizer_d.state_dict(),
        "generators": generator_states(generators),
        "order_state": order_state,  # state the batch order of epoch ``epoch + 1`` is drawn from
        "epoch": epoch,  # epochs completed
        "step": step,  # steps completed of epoch ``epoch + 1`` (0 between epochs)
        "step_stats": step_stats[:step].cpu(),
        "seconds": seconds,  # training seconds spent so far in epoch ``epoch + 1``
        "config": to_dict(config),
    }


def check_run_folder(config: GANConfig, run: RunDir, resume: bool) -> None:
    """A new run needs a folder without one; --resume needs a GAN run with a checkpoint and the same settings."""
    if resume:
        if not run.checkpoint.is_file():
            raise MnistgenError(f"{run.path}: nothing to resume (no checkpoint.pt); train without --resume first")
        _resume_config(run, config)
    elif run.config.is_file() or run.checkpoint.is_file():
        raise MnistgenError(f"{run.path} already holds a run: add --resume to continue it, or choose another --out")


def train_gan(config: GANConfig, images: torch.Tensor, run: RunDir, *, resume: bool = False,
              provenance: dict[str, Any] | None = None, stop: Callable[[], bool] | None = None,
              show_progress: bool | None = None) -> list[dict[str, Any]]:
    """Train (or, with ``resume``, continue) the GAN of ``config`` on ``images`` into ``run``; return the records.

    images: (N, 1, 28, 28) float32 in [0, 1] on any device (the CLI passes the "gan" protocol's 60,000
    training images; tests pass a few). provenance: written to RUN/data.json. ``stop`` is polled before
    every step; when it returns True the state is saved and :class:`TrainingInterrupted` is raised.
    Without ``stop``, Ctrl-C does that (a second Ctrl-C aborts at once). Raises
    :class:`mnistgen.train.common.NonFiniteLossError` if a loss becomes NaN or infinite (the checkpoint
    of the last completed epoch is kept).
    """
    validate_gan_config(config)
    device = resolve_device(config.device)
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise MnistgenError(f"the GAN trains on (N, 1, 28, 28) images; got shape {tuple(images.shape)}")
    if len(images) < config.batch_size:
        raise MnistgenError(f"--batch-size {config.batch_size} is more than the {len(images)} training images "
                            "(the last partial batch is dropped, so no step would be taken)")
    check_run_folder(config, run, resume)
    forward = choose_gan_forward(config.cpu_kernels, device)  # before any file is written: "native" may refuse
    keep_freed_memory()  # reuse freed tensors' memory: no page faults every step (same results)

    with torch_threads(config.threads), (
            sigint_requests_stop() if stop is None else _given(stop)) as stop_requested:
        return _train(config, images, run, resume, provenance, device, forward, stop_requested, show_progress)


@contextmanager
def _given(stop: Callable[[], bool]) -> Iterator[Callable[[], bool]]:
    yield stop


def _train(config: GANConfig, images: torch.Tensor, run: RunDir, resume: bool, provenance: dict[str, Any] | None,
           device: torch.device, forward: GANForward, stop: Callable[[], bool],
           show_progress: bool | None) -> list[dict[str, Any]]:
    order_generator = seed_everything(config.seed)  # also seeds the global RNG that initialises the weights
    generator, discriminator = build_models(config, device)
    optimizer_g, optimizer_d = make_optimizers(generator, discriminator, config)
    rank, world_size = distributed_rank_and_size()
    noise = torch.Generator(device=device)
    noise.manual_seed(stream_seed(config.seed, NOISE_STREAM, *([rank] if world_size > 1 else [])))
    generators = {"order": order_generator, "noise": noise}
    fixed_noise = grid_noise(config, device)

    epochs_done, start_step, saved_stats, seconds_before = 0, 0, None, 0.0
    if resume:
        state = run.load_checkpoint(map_location="cpu")
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        optimizer_g.load_state_dict(state["optimizer_g"])
        optimizer_d.load_state_dict(state["optimizer_d"])
        restore_generators(generators, state["generators"])
        order_generator.set_state(state["order_state"])
        epochs_done, start_step = int(state["epoch"]), int(state["step"])
        saved_stats, seconds_before = state["step_stats"], float(state["seconds"])
        run.truncate_metrics(epochs_done)
    run.write_config(to_dict(config), kind="gan")
    if is_main_process() and provenance is not None:
        write_json(run.data, provenance)
    history = run.read_metrics()
    if not resume:
        save_grid(run, 0, generator, fixed_noise)  # the untrained generator
        run.save_checkpoint(_checkpoint((generator, discriminator), (optimizer_g, optimizer_d), generators, config,
                                        0, 0, order_generator.get_state(), torch.zeros(0, len(STATS)), 0.0))

    images = images.to(device)  # moved once; every batch is a slice of this tensor
    steps_per_epoch = num_batches(len(images), config.batch_size, drop_last=True, world_size=world_size)
    bar = progress(total=steps_per_epoch * max(config.epochs - epochs_done, 0) - start_step, description="gan",
                   enabled=show_progress)
    try:
        for epoch in range(epochs_done, config.epochs):
            bar.set_description(f"gan epoch {epoch + 1}/{config.epochs}")
            order_state = order_generator.get_state()
            batches = list(shuffled_batches(len(images), config.batch_size, order_generator, drop_last=True,
                                            rank=rank, world_size=world_size))
            step_stats = torch.zeros(len(batches), len(STATS), device=device)
            if start_step:
                step_stats[:start_step] = saved_stats.to(device)
            started = time.perf_counter()
            done = train_epoch(generator, discriminator, optimizer_g, optimizer_d, images, batches, noise=noise,
                               step_stats=step_stats, start_step=start_step, stop=stop,
                               on_step=lambda: bar.update(1), forward=forward)
            seconds = seconds_before + time.perf_counter() - started
            if done < len(batches):
                run.save_checkpoint(_checkpoint((generator, discriminator), (optimizer_g, optimizer_d), generators,
                                                config, epoch, done, order_state, step_stats, seconds))
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch + 1} after step {done} of {len(batches)}; saved "
                    f"{run.checkpoint}; continue with: mnistgen gan train --out {run.path} --resume")
            stats = step_stats.cpu()  # the one host synchronisation of the epoch
            bad = torch.nonzero(~torch.isfinite(stats))
            if len(bad):
                step, column = int(bad[0, 0]), int(bad[0, 1])
                check_finite(float(stats[step, column]), STATS[column], epoch + 1, step + 1)
            means = stats.mean(dim=0).tolist()
            record = {"epoch": epoch + 1, **dict(zip(STATS, means, strict=True)), "seconds": seconds,
                      "kernels": forward.kernels}
            run.append_metrics(record)
            if grid_due(epoch + 1, config):
                save_grid(run, epoch + 1, generator, fixed_noise)
            run.save_checkpoint(_checkpoint((generator, discriminator), (optimizer_g, optimizer_d), generators,
                                            config, epoch + 1, 0, order_generator.get_state(), step_stats, 0.0))
            history.append(record)
            bar.set_postfix(d_loss=f"{means[0]:.3f}", g_loss=f"{means[1]:.3f}")
            start_step, seconds_before = 0, 0.0
    finally:
        bar.close()
    return history


# --------------------------------------------------------------------------- a trained generator


def load_generator(run: RunDir, device: torch.device) -> tuple[Generator, GANConfig]:
    """The generator of a GAN run's latest checkpoint, on ``device``, and the run's config."""
    config = run.read_config_as("gan", GANConfig, "a GAN run")
    state = run.load_checkpoint(map_location="cpu")
    if "generator" not in state:
        raise MnistgenError(f"{run.checkpoint}: no generator weights in this checkpoint")
    generator = Generator(config.zdim)
    generator.load_state_dict(state["generator"])
    return generator.to(device).eval(), config


@torch.no_grad()
def sample_images(generator: Generator, n: int, seed: int) -> np.ndarray:
    """n images G(z), z ~ U[-1, 1]^zdim from a CPU generator seeded with ``seed`` (the same z on every device).

    Returns (n, 28, 28) float32 in [0, 1].
    """
    if n <= 0:
        raise MnistgenError(f"--n must be a positive integer, got {n}")
    device = next(generator.parameters()).device
    draws = torch.Generator().manual_seed(stream_seed(seed, SAMPLE_STREAM))
    images = np.empty((n, 28, 28), np.float32)
    for start in range(0, n, SAMPLE_BATCH):
        count = min(SAMPLE_BATCH, n - start)
        z = uniform_noise(count, generator.zdim, draws).to(device)
        images[start:start + count] = generator(z)[:, 0].float().cpu().numpy()
    return images
