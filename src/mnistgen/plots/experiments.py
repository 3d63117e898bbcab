"""Figures of the two theory experiments (docs/theory.md §12): arrays in, matplotlib figures out."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # figures are only written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

EQ_LABELS = {"eq1": "Eq. 1: closed-form KL", "eq2": "Eq. 2: Monte Carlo KL"}
EQ_COLORS = {"eq1": "tab:blue", "eq2": "tab:orange"}
Q_LABELS = {"encoder": "trained encoder q(z|x)", "shared_gaussian": "best single Gaussian q, same for all x",
            "standard_normal": "q = N(0, I) for every x"}
Q_COLORS = {"encoder": "tab:green", "shared_gaussian": "tab:purple", "standard_normal": "tab:gray"}
HISTOGRAM_BINS = 60


def elbo_estimators_figure(eq1_variance: np.ndarray, eq2_variance: np.ndarray, example_draws: Mapping[str, np.ndarray],
                           gradient_variance: Mapping[str, Mapping[str, float]], title: str) -> Figure:
    """Three panels: per-image variance of the ELBO estimate, Eq. 1 vs Eq. 2 (B,) each; the draws {"eq1": (K,),
    "eq2": (K,)} for one image; the gradient variance per image {"encoder"|"decoder": {"eq1"|"eq2": value}}."""
    figure, (scatter, histogram, bars) = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")

    low = max(min(eq1_variance.min(), eq2_variance.min()), 1e-6)
    high = max(eq1_variance.max(), eq2_variance.max())
    below = eq1_variance < eq2_variance
    scatter.scatter(eq1_variance[below], eq2_variance[below], s=14, color="tab:blue",
                    label=f"Eq. 1 lower ({below.sum()} images)")
    scatter.scatter(eq1_variance[~below], eq2_variance[~below], s=14, color="tab:orange",
                    label=f"Eq. 2 lower ({(~below).sum()} images)")
    scatter.plot([low, high], [low, high], color="black", linewidth=1, label="equal variance")
    scatter.set(xscale="log", yscale="log", title="Per-image ELBO estimate: variance over draws",
                xlabel="variance of the Eq. 1 estimate (nats$^2$)", ylabel="variance of the Eq. 2 estimate (nats$^2$)")
    scatter.legend(loc="upper left", fontsize=8)
    scatter.grid(alpha=0.3, which="both")

    both = np.concatenate([example_draws["eq1"], example_draws["eq2"]])
    edges = np.linspace(both.min(), both.max(), HISTOGRAM_BINS + 1)
    for eq, draws in example_draws.items():
        histogram.hist(draws, bins=edges, alpha=0.55, color=EQ_COLORS[eq],
                       label=f"{EQ_LABELS[eq]} (sd {draws.std(ddof=1):.2f})")
    histogram.axvline(float(both.mean()), color="black", linestyle="--", linewidth=1, label="mean of all draws")
    histogram.set(xlabel="one-sample ELBO estimate (nats)", ylabel="number of draws",
                  title=f"One test image, {len(example_draws['eq1'])} draws of eps")
    histogram.legend(fontsize=8)

    groups = list(gradient_variance)
    positions = np.arange(len(groups))
    width = 0.38
    for offset, eq in ((-width / 2, "eq1"), (width / 2, "eq2")):
        heights = [gradient_variance[g][eq] for g in groups]
        drawn = bars.bar(positions + offset, heights, width, color=EQ_COLORS[eq], label=EQ_LABELS[eq])
        bars.bar_label(drawn, labels=[f"{h:.3g}" for h in heights], fontsize=8)
    ratios = [gradient_variance[g]["eq2"] / gradient_variance[g]["eq1"] for g in groups]
    bars.set_xticks(positions, [f"{group} parameters\nEq. 2 / Eq. 1 = {ratio:.3f}"
                                for group, ratio in zip(groups, ratios, strict=True)])
    bars.set(yscale="log", ylabel="gradient variance per image\n(sum over parameters, nats$^2$)",
             title="Variance of the ELBO gradient over draws")
    bars.legend(fontsize=8)
    bars.grid(alpha=0.3, axis="y", which="both")
    figure.suptitle(title)
    return figure


def fixed_encoder_figure(per_image: Mapping[str, np.ndarray], pictures: Mapping[str, np.ndarray],
                         title: str, reference: tuple[str, float] | None = None) -> Figure:
    """Left: histograms of the per-image test ELBO {name: (N,)} for each q, means marked, and an optional
    ``reference`` (label, value) line. Right: test images and p(x|z) at the mean of each q, {name: (M, 28, 28)}."""
    names = [name for name in Q_LABELS if name in per_image]
    rows = ["images"] + names
    columns = len(pictures["images"])
    figure = plt.figure(figsize=(16, 5.6), layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=[1.15, 1])

    axis = left.subplots()
    everything = np.concatenate([per_image[name] for name in names])
    edges = np.linspace(np.quantile(everything, 0.002), everything.max(), HISTOGRAM_BINS + 1)
    for name in names:
        values = per_image[name]
        axis.hist(np.clip(values, edges[0], None), bins=edges, alpha=0.5, color=Q_COLORS[name],
                  label=f"{Q_LABELS[name]}: mean {values.mean():.1f}")
        axis.axvline(float(values.mean()), color=Q_COLORS[name], linewidth=2)
    if reference is not None:
        axis.axvline(reference[1], color="black", linestyle="--", linewidth=1.5,
                     label=f"{reference[0]}: {reference[1]:.1f}")
    axis.set(xlabel="ELBO of one test image (nats; left edge collects the lowest 0.2%)", ylabel="number of test images",
             title=f"Test-set ELBO, {len(per_image[names[0]])} images")
    axis.legend(fontsize=8, loc="upper left")

    grid = right.subplots(len(rows), columns, squeeze=False)
    row_titles = {"images": "test image x", "encoder": "p(x|z) at z = mean of\ntrained q(z|x)",
                  "shared_gaussian": "p(x|z) at z = mean of\nshared Gaussian q",
                  "standard_normal": "p(x|z) at z = 0\n(mean of N(0, I))"}
    for r, row in enumerate(rows):
        for c in range(columns):
            cell = grid[r][c]
            cell.imshow(pictures[row][c], cmap="gray_r", vmin=0, vmax=1)
            cell.set(xticks=[], yticks=[])
        grid[r][0].set_ylabel(row_titles[row], fontsize=8, rotation=0, ha="right", va="center")
    right.suptitle("What each q decodes to: only the encoder's depends on x", fontsize=10)
    figure.suptitle(title)
    return figure
