"""The GAN's figures: arrays in, :class:`matplotlib.figure.Figure` out (saving is the caller's job)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..imaging import tile

INK = "gray"  # colormap for (28, 28) images in [0, 1]: white = 1 = ink, as MNIST is stored
PANEL_INCHES = 3.2  # displayed size of one 8x8 grid


def progress_figure(epochs: Sequence[int], grids: Sequence[np.ndarray], side: int = 8,
                    generator: str = "G(z)") -> Figure:
    """SPEC §3's progress figure: grids (side*side, 28, 28) of the same fixed noise at ``epochs`` (0 = before
    training), side by side; ``generator`` names what made them in the title."""
    if len(epochs) != len(grids) or not epochs:
        raise ValueError("give one grid per epoch, at least one")
    figure = Figure(figsize=(PANEL_INCHES * len(grids) + 0.4, PANEL_INCHES + 0.9), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(grids)))
    for axis, epoch, images in zip(axes, epochs, grids, strict=True):
        axis.imshow(tile(images, side, side, padding=1), cmap=INK, vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set_title("before training (epoch 0)" if epoch == 0 else f"epoch {epoch}", fontsize=11)
        axis.set(xticks=[], yticks=[])
    # two lines where fewer than three panels (or a longer name of the generator) leave the title too little width
    separator = " " if len(grids) >= 3 and generator == "G(z)" else "\n"
    figure.suptitle(f"GAN samples {generator} for the same {side * side} noise vectors z ~ U[-1, 1]^zdim,"
                    f"{separator}as training progresses", fontsize=11)
    return figure


PANELS = (  # (metrics.jsonl key, label, y label, reference value, what the reference means)
    ("d_loss", "D loss  -[log D(x) + log(1 - D(G(z)))]", "mean binary cross-entropy (nats)", 2 * np.log(2),
     "D = 1/2 (2 log 2)"),
    ("g_loss", "G loss  -log D(G(z))", "mean binary cross-entropy (nats)", None, None),
    ("d_real", "mean D(x), real images", "probability of 'real'", 0.5, "1/2: D cannot tell them apart"),
    ("d_fake", "mean D(G(z)), generated images", "probability of 'real'", 0.5, "1/2: D cannot tell them apart"),
)


def _finish(axis, ylabel: str, reference: float | None, meaning: str | None, heading: str, **legend) -> None:
    if reference is not None:
        axis.axhline(reference, color="gray", linestyle=":", linewidth=1, label=meaning)
    if ylabel.startswith("probability"):
        axis.set_ylim(0.0, 1.0)
    axis.set_title(heading, fontsize=10)
    axis.set(xlabel="epoch", ylabel=ylabel)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axis.legend(fontsize=8, **legend)


def training_figure(records: Sequence[dict]) -> Figure:
    """Losses and D's mean outputs per epoch, from the records of RUN/metrics.jsonl."""
    epochs = [r["epoch"] for r in records]
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    for axis, panels, title in zip(figure.subplots(1, 2), (PANELS[:2], PANELS[2:]),
                                   ("losses (mean over the epoch's steps)", "discriminator outputs"), strict=True):
        for key, label, *_ in panels:
            axis.plot(epochs, [r[key] for r in records], label=label, marker=".")
        _finish(axis, *panels[0][2:], title)
    figure.suptitle("GAN training", fontsize=11)
    return figure


def replica_training_figure(histories: Mapping[int, Sequence[dict]]) -> Figure:
    """A replica run's training curves, ``{seed: its records}``: one panel per quantity, one line (colour) per seed."""
    figure = Figure(figsize=(11, 7.2), layout="constrained")
    for axis, (key, title, ylabel, reference, meaning) in zip(figure.subplots(2, 2).ravel(), PANELS, strict=True):
        for index, (seed, records) in enumerate(histories.items()):
            axis.plot([r["epoch"] for r in records], [r[key] for r in records], color=f"C{index % 10}", marker=".",
                      label=f"seed {seed}")
        _finish(axis, ylabel, reference, meaning,
                title + " (mean over the epoch's steps)" if key.endswith("loss") else title, title="replica")
    figure.suptitle(f"GAN training of {len(histories)} seeds", fontsize=11)
    return figure
