"""The VAE's figures (SPEC §2 figures 1-3, the 2-D manifold, the training curves): arrays in, a standalone
:class:`matplotlib.figure.Figure` out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..imaging import tile

INK = "gray"  # colormap for (28, 28) images in [0, 1]: 0 black background, 1 white ink, as MNIST is stored
IMAGE_INCHES = 0.75  # displayed size of one 28x28 image in the grid figures
CURVE_LABELS = {
    "train_elbo": "train (mean over the epoch's steps)",
    "test_elbo": "test (after the epoch)",
    "validation_elbo": "validation (after the epoch)",
}


def _class_name(label: int, classes: Sequence[str] | None) -> str:
    return classes[label] if classes is not None and label < len(classes) else str(label)


def _image(axis, image: np.ndarray) -> None:
    axis.imshow(image, cmap=INK, vmin=0.0, vmax=1.0, interpolation="nearest")
    axis.set(xticks=[], yticks=[])


def samples_figure(probabilities: np.ndarray, binary: np.ndarray, z: np.ndarray) -> Figure:
    """SPEC figure 1: one row per z ~ N(0, I) (R, D_z); left p(x|z), right one x ~ p(x|z), (R, 28, 28) each."""
    rows = len(probabilities)
    figure = Figure(figsize=(3.6, 0.9 * rows + 1.3), layout="constrained")
    axes = figure.subplots(rows, 2, squeeze=False)
    for row in range(rows):
        _image(axes[row, 0], probabilities[row])
        _image(axes[row, 1], binary[row])
        coordinates = ", ".join(f"{value:+.2f}" for value in z[row][:2])
        axes[row, 0].set_ylabel(f"z = ({coordinates})", rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("p(x|z)\npixel probabilities", fontsize=9)
    axes[0, 1].set_title("x ~ p(x|z)\none binary sample", fontsize=9)
    figure.suptitle(f"{rows} samples from the prior z ~ N(0, I)", fontsize=10)
    return figure


def latent_figure(means: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None,
                  subtitle: str = "") -> Figure:
    """SPEC figure 2: each image's mean of q(z|x), (N, D_z) (the first two drawn), a point colored by its label (N,)."""
    figure = Figure(figsize=(7.5, 6.5), layout="constrained")
    axis = figure.subplots()
    palette = list(colormaps["tab10"].colors)
    order = np.random.default_rng(0).permutation(len(means))  # draw classes interleaved, not one on top
    colors = np.asarray(palette)[labels[order] % len(palette)]
    axis.scatter(means[order, 0], means[order, 1], c=colors, s=2, alpha=0.6, linewidths=0, rasterized=True)
    handles = [Line2D([], [], marker="o", linestyle="", color=palette[c % len(palette)], markersize=7,
                      label=_class_name(c, classes)) for c in sorted(set(labels.tolist()))]
    axis.legend(handles=handles, title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axis.set(xlabel="z1 (mean of q(z|x))", ylabel="z2 (mean of q(z|x))")
    axis.set_aspect("equal", adjustable="datalim")
    axis.grid(alpha=0.3)
    title = "Latent space: each training image encoded to the mean of q(z|x)"
    axis.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    return figure


def interpolation_figure(rows: np.ndarray, pairs: Sequence[tuple[int, int]], alphas: Sequence[float],
                         classes: Sequence[str] | None = None) -> Figure:
    """SPEC figure 3: p(x|z), z = alpha mu_a + (1 - alpha) mu_b: rows (P, A, 28, 28), P pairs (a, b), A alphas."""
    count, steps = rows.shape[:2]
    figure = Figure(figsize=(IMAGE_INCHES * steps + 1.6, IMAGE_INCHES * count + 1.4), layout="constrained")
    axes = figure.subplots(count, steps, squeeze=False)
    for r in range(count):
        for c in range(steps):
            _image(axes[r, c], rows[r, c])
        a, b = (_class_name(label, classes) for label in pairs[r])
        axes[r, 0].set_ylabel(f"{b} \u2192 {a}", rotation=0, ha="right", va="center", fontsize=11)
    for c, alpha in enumerate(alphas):
        axes[0, c].set_title(f"\u03b1={alpha:g}", fontsize=9)
    figure.suptitle("Interpolation between two training images of different classes (row label: class b \u2192 "
                    "class a)\nz = \u03b1 \u03bc_a + (1 \u2212 \u03b1) \u03bc_b, image = p(x|z)", fontsize=10)
    return figure


def manifold_figure(images: np.ndarray, axis_values: np.ndarray) -> Figure:
    """p(x|z) at each point of a regular latent grid, placed at its (z1, z2): images (P*P, 28, 28) in image order
    (rows from the highest z2 down), axis_values (P,) the grid's coordinates."""
    points = len(axis_values)
    mosaic = tile(images, points, points, padding=0)
    spacing = (axis_values[-1] - axis_values[0]) / (points - 1) if points > 1 else 1.0
    low, high = axis_values[0] - spacing / 2, axis_values[-1] + spacing / 2
    figure = Figure(figsize=(8.0, 8.4), layout="constrained")
    axis = figure.subplots()
    axis.imshow(mosaic, cmap=INK, vmin=0.0, vmax=1.0, extent=(low, high, low, high), interpolation="nearest")
    axis.set(xlabel="z1", ylabel="z2")
    axis.set_title(f"Learned manifold: p(x|z) on a {points} x {points} grid of the latent plane "
                   f"[{axis_values[0]:g}, {axis_values[-1]:g}]\u00b2", fontsize=10)
    return figure


ZOOM_RATIO = 3.0  # a second panel zooms on the later epochs when all epochs span this many times their range


def curves_figure(history: Sequence[dict[str, Any]]) -> Figure:
    """Train and held-out ELBO by epoch from a run's metrics.jsonl records. Where the first epochs (far lower: the
    first training ELBO starts from an untrained model) squash the later ones, a second panel shows those alone."""
    curves = _elbo_curves(history)
    trained_on = next((r["train_elbo_is"] for r in history if "train_elbo_is" in r), None)  # iwae, K > 1
    labels = {**CURVE_LABELS, **({"train_elbo": f"train: {trained_on}"} if trained_on else {})}
    zoom_from = _zoom_start(curves)
    panels = 1 if zoom_from is None else 2
    figure = Figure(figsize=(7.5 if panels == 1 else 12.0, 4.5), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for index, axis in enumerate(axes):
        first = None if index == 0 else zoom_from
        _panel(axis, {labels[key]: points for key, points in curves.items()}, first, title="images")
        if panels == 2:
            last = max(x for points in curves.values() for x, _ in points)
            axis.set_title("all epochs" if index == 0 else
                           f"epochs {first}\u2013{last}, zoomed (the first epochs are far lower)", fontsize=10)
    if not curves:
        axes[0].text(0.5, 0.5, "no completed epoch yet", ha="center", va="center", transform=axes[0].transAxes)
    figure.suptitle("Training curves: evidence lower bound per epoch (higher is better)", fontsize=11)
    return figure


def _elbo_curves(history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[Any, float]]]:
    """{"train_elbo": [(epoch, value), ...], "test_elbo" or "validation_elbo": [...]}, each with a point."""
    curves = {key: [(r["epoch"], r[key]) for r in history if r.get(key) is not None] for key in CURVE_LABELS}
    return {key: points for key, points in curves.items() if points}


def replica_curves_figure(histories: Mapping[int, Sequence[dict[str, Any]]]) -> Figure:
    """The training curves of a replica run, ``{seed: its metrics.jsonl records}``: one row of panels per ELBO, one
    line per seed (the same colour in every panel), a second column zoomed as in :func:`curves_figure`."""
    per_seed = {seed: _elbo_curves(history) for seed, history in histories.items()}
    series = [key for key in CURVE_LABELS if any(key in curves for curves in per_seed.values())]
    zoom_from = _zoom_start({f"{seed} {key}": points for seed, curves in per_seed.items()
                             for key, points in curves.items()})
    columns = 1 if zoom_from is None else 2
    figure = Figure(figsize=(7.5 if columns == 1 else 12.0, 0.6 + 3.4 * max(1, len(series))), layout="constrained")
    axes = figure.subplots(max(1, len(series)), columns, squeeze=False)
    colours = list(colormaps["tab10"].colors)
    for row, key in enumerate(series):
        last = max(x for curves in per_seed.values() for x, _ in curves.get(key, []))
        for column, axis in enumerate(axes[row]):
            first = None if column == 0 else zoom_from
            _panel(axis, {f"seed {seed}": curves.get(key, []) for seed, curves in per_seed.items()}, first,
                   colours, title="replica", fontsize=8)
            zoomed = "" if first is None else f", epochs {first}\u2013{last}, zoomed"
            name, _, detail = CURVE_LABELS[key].partition(" ")  # "test (after the epoch)" -> test ELBO (after ...)
            axis.set_title(f"{name} ELBO {detail}{zoomed}", fontsize=10)
    if not series:
        axes[0][0].text(0.5, 0.5, "no completed epoch yet", ha="center", va="center", transform=axes[0][0].transAxes)
    figure.suptitle(f"Training curves of {len(per_seed)} seeds: evidence lower bound per epoch (higher is better)",
                    fontsize=11)
    return figure


def _panel(axis, lines: dict[str, list[tuple[Any, float]]], first: Any | None, colours: list | None = None,
           **legend: Any) -> None:
    """ELBO curves by epoch on one axis, from epoch ``first`` (all where None), each labelled with its key."""
    for index, (label, points) in enumerate(lines.items()):
        shown = [(x, y) for x, y in points if first is None or x >= first]
        if shown:
            xs, ys = zip(*shown, strict=True)
            axis.plot(xs, ys, color=None if colours is None else colours[index % len(colours)],
                      marker="o" if len(xs) < 15 else None, markersize=3, label=label)
    axis.set(xlabel="epoch", ylabel="ELBO (nats per image)")
    axis.grid(alpha=0.3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if lines:
        axis.legend(**legend)


def _zoom_start(curves: dict[str, list[tuple[Any, float]]]) -> Any | None:
    """The first epoch of the zoomed panel, or None when all epochs fit one panel without squashing the later ones."""
    epochs = sorted({x for points in curves.values() for x, _ in points})
    if len(epochs) < 3:
        return None
    start = epochs[max(1, len(epochs) // 10)]
    values = [y for points in curves.values() for _, y in points]
    late = [y for points in curves.values() for x, y in points if x >= start]
    span, late_span = max(values) - min(values), max(late) - min(late)
    return start if span > ZOOM_RATIO * max(late_span, 1e-9) else None
