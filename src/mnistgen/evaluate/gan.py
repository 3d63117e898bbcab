"""A trained GAN's run folder: its generator, samples from it, and its figures (``mnistgen gan plot|sample``).

The grids themselves are saved during training (:meth:`mnistgen.runs.RunDir.save_grid`); this module reads
them back to draw the progress figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import GANConfig
from ..distributions import sample_uniform_noise
from ..errors import MnistgenError
from ..models.gan import Generator
from ..runs import GRID_SIDE, RunDir
from ..train.common import stream_seed
from ..train.gan import STATS

SAMPLE_STREAM = 3  # key of the generator of ``mnistgen gan sample`` (with the sample seed)
SAMPLE_BATCH = 1000  # images generated per forward pass by :func:`sample_images`


def load_generator(run: RunDir, device: torch.device) -> tuple[Generator, GANConfig]:
    """The generator of a GAN run's latest checkpoint, on ``device`` in eval mode, and the run's config."""
    config = run.read_config_as("gan", GANConfig, "a GAN run")
    state = run.load_checkpoint(map_location="cpu")
    if "generator" not in state:
        raise MnistgenError(f"{run.checkpoint}: no generator weights in this checkpoint")
    generator = Generator(config.zdim)
    try:
        generator.load_state_dict(state["generator"])
    except RuntimeError as exc:
        raise MnistgenError(f"{run.checkpoint}: weights do not fit the run's config ({type(exc).__name__})") from None
    return generator.to(device).eval(), config


@torch.no_grad()
def sample_images(generator: Generator, n: int, seed: int) -> np.ndarray:
    """n images G(z), z ~ U[-1, 1]^zdim from a CPU generator seeded with ``seed`` (the same z on every device).

    Returns (n, 28, 28) float32 in [0, 1].
    """
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


def write_figures(run: RunDir, epochs: list[int]) -> list[Path]:
    """RUN/figures/progress.png (the grids of ``epochs`` side by side) and, once an epoch is done, training.png."""
    from ..plots.gan import progress_figure, training_figure

    available = run.grid_epochs()
    missing = [epoch for epoch in epochs if epoch not in available]
    if missing:
        listed = ", ".join(str(e) for e in available) or "none yet"
        raise MnistgenError(f"{run.path}: no saved grid for epoch(s) {', '.join(map(str, missing))}; "
                            f"grids exist for epochs {listed}")
    figures = {"progress": progress_figure(epochs, [run.load_grid(epoch) for epoch in epochs], GRID_SIDE)}
    records = run.read_metrics(required=STATS)  # the figure draws these four
    if records:
        figures["training"] = training_figure(records)
    return run.save_figures(figures)
