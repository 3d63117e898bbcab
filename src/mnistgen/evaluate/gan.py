"""A trained GAN's run folder: its generator, samples from it, and its figures (``mnistgen gan plot|sample``).

A run trained with ``--ema-decay`` keeps a moving average of G's weights beside G: samples, figures and scores use
the average, and say so (:func:`generator_label`); ``raw=True`` (``--raw``) uses the trained G itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import GANConfig
from ..device import stream_seed
from ..distributions import sample_uniform_noise
from ..errors import MnistgenError
from ..models.gan import AVERAGE, STATS, Generator
from ..runs import GRID_SIDE, RunDir

SAMPLE_STREAM = 3  # key of the generator of ``mnistgen gan sample`` (with the sample seed)
SAMPLE_BATCH = 1000  # images generated per forward pass by :func:`sample_images`


def uses_average(config: GANConfig, raw: bool = False) -> bool:
    return config.ema_decay is not None and not raw


def generator_label(config: GANConfig, raw: bool = False) -> str:
    """What made a run's images, for messages and figure titles: "G(z)", or the average's name and decay."""
    if uses_average(config, raw):
        return f"G_ema(z) (G's weights averaged, EMA decay {config.ema_decay})"
    return "G(z) (the trained G, not its average)" if config.ema_decay is not None else "G(z)"


def load_generator(run: RunDir, device: torch.device, raw: bool = False) -> tuple[Generator, GANConfig]:
    """The generator of a GAN run's latest checkpoint (the average, see above), on ``device`` in eval mode, and the
    run's config."""
    config = run.read_config_as("gan", GANConfig, "a GAN run")
    state = run.load_checkpoint(map_location="cpu")
    key = AVERAGE if uses_average(config, raw) else "generator"
    if key not in state:
        what = "averaged generator (--ema-decay)" if key == AVERAGE else "generator"
        raise MnistgenError(f"{run.checkpoint}: no {what} weights in this checkpoint")
    generator = Generator(config.zdim)
    try:
        generator.load_state_dict(state[key])
    except RuntimeError as exc:
        raise MnistgenError(f"{run.checkpoint}: weights do not fit the run's config ({type(exc).__name__})") from None
    return generator.to(device).eval(), config


@torch.no_grad()
def sample_images(generator: Generator, n: int, seed: int) -> np.ndarray:
    """n images G(z), (n, 28, 28) float32 in [0, 1], z ~ U[-1, 1]^zdim from a CPU generator seeded with ``seed``
    (the same z on every device)."""
    if n <= 0:
        raise MnistgenError(f"--n must be a positive integer, got {n}")
    parameter = next(generator.parameters())
    draws = torch.Generator().manual_seed(stream_seed(seed, SAMPLE_STREAM))
    images = np.empty((n, 28, 28), np.float32)
    for start in range(0, n, SAMPLE_BATCH):
        count = min(SAMPLE_BATCH, n - start)
        z = sample_uniform_noise(count, generator.zdim, draws).to(parameter.device, parameter.dtype)
        images[start:start + count] = generator(z)[:, 0].float().cpu().numpy()
    return images


def write_figures(run: RunDir, epochs: list[int], raw: bool = False) -> list[Path]:
    """RUN/figures/progress.png (the grids of ``epochs`` side by side; with ``raw``, RUN/grids/raw) and, once an epoch
    is done, training.png. A replica run: the first seed's grids, every seed's curves."""
    from ..plots.gan import progress_figure, replica_training_figure, training_figure

    config = run.read_config_as("gan", GANConfig, "a GAN run")
    from_raw = raw and config.ema_decay is not None  # without an average, the grids are G's own
    replicas = run.replicas()
    source = replicas[0][1] if replicas else run
    available = source.grid_epochs(from_raw)
    missing = [epoch for epoch in epochs if epoch not in available]
    if missing:
        listed = ", ".join(str(e) for e in available) or "none yet"
        raise MnistgenError(f"{source.path}: no saved grid for epoch(s) {', '.join(map(str, missing))}; "
                            f"grids exist for epochs {listed}")
    figures = {"progress": progress_figure(epochs, [source.load_grid(epoch, from_raw) for epoch in epochs], GRID_SIDE,
                                           generator_label(config, raw))}
    if replicas:
        histories = {seed: seed_run.read_metrics(required=STATS) for seed, seed_run in replicas}
        if any(histories.values()):
            figures["training"] = replica_training_figure(histories)
    else:
        records = run.read_metrics(required=STATS)  # the figure draws these four
        if records:
            figures["training"] = training_figure(records)
    return run.save_figures(figures)
