"""Figures the report draws itself from a run's metrics (the models' own figures come from their plots modules)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; figures are only written to PNG bytes
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PANEL_SIZE = (5.0, 3.4)  # inches per panel: readable at the report's width


def metric_curves(epochs: Sequence[float], panels: Sequence[tuple[str, str, dict[str, Sequence[float]]]],
                  title: str) -> Figure:
    """One panel per (panel title, y-axis label, {series label: values by epoch}), side by side.

    ``epochs`` (E,) is the shared x axis; each series has E values (None where an epoch lacks it).
    """
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
