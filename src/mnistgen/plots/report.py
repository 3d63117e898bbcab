"""The training curves the report draws itself from a run's metrics.jsonl, when the run has no curves figure of its
own (the models' figures come from their plots modules): known metrics in their panels, others in one more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; figures are only written to PNG bytes
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..stats import is_number  # noqa: E402

PANEL_SIZE = (5.0, 3.4)  # inches per panel: readable at the report's width
# The panels of known metrics: (title, y label, {metric: legend}).
KNOWN_PANELS = (
    ("GAN losses", "mean over the epoch's steps", {"d_loss": "D: cross-entropy on real and generated",
                                                    "g_loss": "G: -log D(G(z)) (non-saturating)"}),
    ("discriminator outputs", "mean probability of 'real'", {"d_real": "D(x) on real images",
                                                             "d_fake": "D(G(z)) on generated images"}),
    ("ELBO", "nats per image (higher is better)", {"train_elbo": "training images", "test_elbo": "test images",
                                                   "validation_elbo": "validation images"}),
)
NOT_PLOTTED = ("epoch", "seconds", "train_seconds", "lr")
Series = list[float | None]  # a metric's value at each epoch of the x axis, None where an epoch lacks it


def metric_curves(epochs: Sequence[float], panels: Sequence[tuple[str, str, dict[str, Sequence[float]]]],
                  title: str) -> Figure:
    """One panel per (title, y label, {series label: its value at each of ``epochs``, or None}), side by side."""
    figure, axes = plt.subplots(1, len(panels), figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]),
                                squeeze=False, layout="constrained")
    for axis, (panel_title, ylabel, series) in zip(axes[0], panels, strict=True):
        for label, values in series.items():
            points = [(x, y) for x, y in zip(epochs, values, strict=True) if y is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o" if len(xs) < 15 else None, markersize=3, label=label)
        axis.set_title(panel_title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return figure


def numeric_series(records: list[dict[str, Any]], key: str) -> Series:
    return [r.get(key) if is_number(r.get(key)) else None for r in records]


def history_curves(histories: dict[int | None, list[dict[str, Any]]], title: str) -> Figure | None:
    """The curves of a run's metrics.jsonl records, ``{None: records}``, or of every seed of a replica run, ``{seed:
    its records}`` (one line per seed, "seed S: metric", a gap where a seed lacks an epoch); None if nothing to draw."""
    by_epoch = {seed: {r.get("epoch", i): r for i, r in enumerate(records)} for seed, records in histories.items()}
    epochs = sorted({epoch for records in by_epoch.values() for epoch in records})
    records = [r for found in histories.values() for r in found]
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in NOT_PLOTTED]
    keys = [k for k in keys if any(v is not None for v in numeric_series(records, k))]
    if not epochs or not keys:
        return None

    def lines(key: str, label: str) -> dict[str, Series]:
        return {label if seed is None else f"seed {seed}: {label}": numeric_series([found.get(e, {}) for e in epochs],
                                                                                   key)
                for seed, found in by_epoch.items()}

    known = {key for _, _, legend in KNOWN_PANELS for key in legend}
    panels = [(panel_title, ylabel, {name: values for key, label in legend.items() if key in keys
                                     for name, values in lines(key, label).items()})
              for panel_title, ylabel, legend in KNOWN_PANELS]
    panels.append(("other metrics", "value", {name: values for key in keys if key not in known
                                              for name, values in lines(key, key).items()}))
    return metric_curves(epochs, [panel for panel in panels if panel[2]], title)
