"""``report.html``: one self-contained page describing a reproduction folder (or a single VAE or GAN run).

Everything the page shows is read from the folder (see :mod:`mnistgen.reproduce` for its layout and
:mod:`mnistgen.runs` for a run folder's): every figure embedded as a base64 ``data:`` URI with a
caption, the metrics as tables, the training curves, the configuration, the data's provenance, the
sample-quality scores beside the real-vs-real reference, the versions, the machine and the time of
each stage. The page loads nothing: no script, no font, no stylesheet from anywhere, and a
Content-Security-Policy that forbids every request except ``data:`` images.

The builder only reads the folder; the one file it writes is the page itself (atomically).
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MnistgenError
from .files import atomic_write, figure_png, read_json
from .runs import RunDir
from .stats import spread
from .version import __version__

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
LIBRARIES = ("torch", "numpy", "matplotlib", "pillow", "tqdm", "platformdirs")
SAMPLE_PREVIEW = (6, 12)  # rows x columns of the preview of each scored sample set
SAMPLE_PREVIEW_SCALE = 2  # pixels per image pixel in that preview
LONG_TOKEN = 32  # strings longer than this without a space (paths, checksums) may break anywhere
METRIC_ROWS_SHOWN = 12  # per-epoch tables longer than this are folded (the full table stays in the page)

# Captions of the figures the model commands write, by run kind and file name; others get their name.
CAPTIONS: dict[tuple[str, str], str] = {
    ("vae", "samples.png"): (
        "SPEC figure 1. Ten latent points z drawn from the prior N(0, I), one per row. Left: the decoder's "
        "output p(x|z), the probability that each pixel is on, as a gray level; right: one binary image "
        "x ~ Bernoulli(p(x|z)) drawn from it."),
    ("vae", "latent.png"): (
        "SPEC figure 2. Every training image of the protocol encoded: the mean of q(z|x) as a point in the "
        "2-D latent plane, colored by the image's digit class. Classes that share a region are the ones "
        "the model confuses."),
    ("vae", "interpolation.png"): (
        "SPEC figure 3. Three pairs of training images of different classes (one pair per row). Both images "
        "are encoded, and the decoder's p(x|z) is shown along the straight line "
        "z = alpha mu_a + (1 - alpha) mu_b, alpha = 0, 0.1, ..., 1."),
    ("vae", "manifold.png"): (
        "The learned 2-D manifold: the decoder's mean image p(x|z) at each point of a regular grid over the "
        "latent plane. Neighbouring points decode to similar digits."),
    ("vae", "curves.png"): (
        "Training curves: the evidence lower bound (ELBO, in nats per image; higher is better) on the "
        "training images and on the held-out images after each epoch. When the first epochs are far lower than "
        "the rest, a second panel shows the later epochs alone on their own scale."),
    ("gan", "progress.png"): (
        "SPEC §3 progress figure: the generator's images for one fixed batch of noise at chosen epochs (SPEC's "
        "example: 0, 30 and 70 of 100), side by side. Epoch 0 is the untrained generator."),
    ("gan", "training.png"): (
        "Training curves: left, the mean losses of D (binary cross-entropy on real and generated images) and "
        "of G (the non-saturating -log D(G(z))) per epoch; right, D's mean probability of 'real' on real and "
        "on generated images. Both near 1/2 means D can no longer tell them apart."),
}
CURVES_FIGURE = {"vae": "curves.png", "gan": "training.png"}  # when absent, the report draws the curves itself
SAMPLE_SET_TITLES = {
    "vae_means": "VAE, decoder means p(x|z), z ~ N(0, I)",
    "vae_binary": "VAE, binary draws x ~ p(x|z), z ~ N(0, I)",
    "gan": "GAN, G(z), z ~ U[-1, 1]^zdim",
}


# --------------------------------------------------------------------------- small HTML helpers


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


SEPARATOR_FROM = 10_000  # counts from here on get thousands separators (10,000 images); 4-digit ones read fine
PLAIN_KEYS = ("seed",)  # identifiers: shown as typed wherever they appear, never as a count (1234, not 1,234)


def format_value(value: Any) -> str:
    """A measured number as a person reads it (ELBOs with 2 decimals, small values with 4 digits, counts of five
    digits or more with thousands separators); text escaped."""
    if isinstance(value, bool) or value is None:
        return escape("—" if value is None else value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= SEPARATOR_FROM else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return escape(value)
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.2f}"
        if magnitude >= 1:
            return f"{value:.4f}"
        return f"{value:.4g}"
    return escape(value)


def format_setting(value: Any) -> str:
    """A setting or an identifier as it was typed: integers without separators (seed 1234), floats in their
    shortest exact form (15.0, 0.0002, 1e-05), never padded to a number of decimals; text escaped."""
    if isinstance(value, float) and not isinstance(value, bool) and math.isfinite(value):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return format_value(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], css_class: str = "") -> str:
    """An HTML table; cells that are already HTML are passed as :class:`Markup`."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell_html(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Markup(str):
    """A string that is already HTML (not escaped again)."""


def cell_html(value: Any) -> str:
    return value if isinstance(value, Markup) else format_value(value)


def is_plain_key(key: Any) -> bool:
    return isinstance(key, str) and (key in PLAIN_KEYS or key.endswith("_seed"))


def value_html(value: Any, settings: bool = False) -> Markup:
    """Any JSON value as HTML: dicts as key/value tables, lists of dicts as tables, lists of scalars joined.

    Numbers are measurements (:func:`format_value`), or with ``settings`` a configuration's values as typed
    (:func:`format_setting`); identifiers such as a seed are shown as typed either way.
    """
    if isinstance(value, dict):
        if not value:
            return Markup("—")
        return Markup(table(("key", "value"), ((k, value_html(v, settings or is_plain_key(k)))
                                               for k, v in value.items()), "kv"))
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            headers = list(dict.fromkeys(k for v in value for k in v))
            return Markup(table(headers, ([value_html(v.get(h), settings or is_plain_key(h)) for h in headers]
                                          for v in value), "kv"))
        return Markup(", ".join(cell_html(value_html(v, settings)) for v in value) or "—")
    if isinstance(value, str) and len(value) > LONG_TOKEN and " " not in value:  # a path or a checksum
        return Markup(f'<span class="token">{escape(value)}</span>')
    return Markup(format_setting(value) if settings else format_value(value))


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_html(png: bytes, caption: str, alt: str, css_class: str = "") -> str:
    return (f'<figure class="{css_class}"><img src="{png_data_uri(png)}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def array_png(image: np.ndarray, scale: int) -> bytes:
    """A 2-D array in [0, 1] as grayscale PNG bytes, enlarged ``scale`` times (nearest neighbour)."""
    from PIL import Image

    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    picture = Image.fromarray(pixels, mode="L")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{body}</section>'


def details(summary: str, body: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>{body}</details>"


# --------------------------------------------------------------------------- reading a folder


def read_json_if_present(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def metrics_table(records: list[dict[str, Any]]) -> str:
    """Per-epoch metrics: the last epochs visible, the whole history folded below."""
    if not records:
        return "<p class='missing'>No metrics recorded.</p>"
    headers = list(dict.fromkeys(k for r in records for k in r))
    rows = [[r.get(h) for h in headers] for r in records]
    if len(rows) <= METRIC_ROWS_SHOWN:
        return table(headers, rows, "metrics")
    return (table(headers, rows[-3:], "metrics")
            + details(f"all {len(rows)} epochs", table(headers, rows, "metrics")))


def numeric_series(records: list[dict[str, Any]], key: str) -> list[float | None]:
    return [r.get(key) if isinstance(r.get(key), int | float) else None for r in records]


# Panels of the curves the report draws for a run without curves.png: (title, y label, {metric: legend}).
KNOWN_PANELS = (
    ("GAN losses", "mean over the epoch's steps", {"d_loss": "D: cross-entropy on real and generated",
                                                    "g_loss": "G: -log D(G(z)) (non-saturating)"}),
    ("discriminator outputs", "mean probability of 'real'", {"d_real": "D(x) on real images",
                                                             "d_fake": "D(G(z)) on generated images"}),
    ("ELBO", "nats per image (higher is better)", {"train_elbo": "training images", "test_elbo": "test images",
                                                   "validation_elbo": "validation images"}),
)
NOT_PLOTTED = ("epoch", "seconds", "train_seconds", "lr")


def plotted_keys(records: list[dict[str, Any]]) -> list[str]:
    """The metrics the curves show: those with a number in some record, but the epoch, times and learning rate."""
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in NOT_PLOTTED]
    return [k for k in keys if any(v is not None for v in numeric_series(records, k))]


def curve_panels(keys: list[str], lines: Callable[[str, str], dict[str, list[float | None]]]
                 ) -> list[tuple[str, str, dict[str, list[float | None]]]]:
    """The panels of the curves: known metrics in their panels, others in one more. ``lines(key, label)`` gives the
    lines of one metric, {legend: its values by epoch}: one line for a run, one per seed for a replica run."""
    panels = []
    for panel_title, ylabel, legend in KNOWN_PANELS:
        series = {name: values for key, label in legend.items() if key in keys
                  for name, values in lines(key, label).items()}
        if series:
            panels.append((panel_title, ylabel, series))
    known = {key for _, _, legend in KNOWN_PANELS for key in legend}
    others = {name: values for key in keys if key not in known for name, values in lines(key, key).items()}
    if others:
        panels.append(("other metrics", "value", others))
    return panels


def curves_png(records: list[dict[str, Any]], title: str) -> bytes | None:
    """Curves of the numeric metrics by epoch (known metrics in their panels, others in one more); None if none."""
    from .plots.report import metric_curves

    epochs = [r.get("epoch", i) for i, r in enumerate(records)]
    keys = plotted_keys(records)
    if not records or not keys:
        return None
    panels = curve_panels(keys, lambda key, label: {label: numeric_series(records, key)})
    return figure_png(metric_curves(epochs, panels, title))


def replica_curves_png(histories: dict[int, list[dict[str, Any]]], title: str) -> bytes | None:
    """The curves of every seed of a replica run, ``{seed: its metrics.jsonl records}``: each metric one line per seed,
    labelled "seed S: metric", on the epochs of all seeds (a seed that lacks an epoch has a gap); None if none."""
    from .plots.report import metric_curves

    by_epoch = {seed: {r.get("epoch", i): r for i, r in enumerate(records)} for seed, records in histories.items()}
    epochs = sorted({epoch for records in by_epoch.values() for epoch in records})
    keys = plotted_keys([r for records in histories.values() for r in records])
    if not epochs or not keys:
        return None

    def lines(key: str, label: str) -> dict[str, list[float | None]]:
        return {f"seed {seed}: {label}": numeric_series([records.get(e, {}) for e in epochs], key)
                for seed, records in by_epoch.items()}

    return figure_png(metric_curves(epochs, curve_panels(keys, lines), title))


def run_figures(run: RunDir, kind: str) -> list[tuple[str, bytes, str]]:
    """(file name, PNG bytes, caption) of the run's figures/*.png, the known figures first in SPEC order."""
    if not run.figures.is_dir():
        return []
    order = [name for (k, name) in CAPTIONS if k == kind]
    files = sorted(run.figures.glob("*.png"), key=lambda p: (order.index(p.name) if p.name in order
                                                           else len(order), p.name))
    return [(p.name, p.read_bytes(), CAPTIONS.get((kind, p.name), f"{p.stem.replace('_', ' ')} ({p.name})"))
            for p in files]


def run_section(run: RunDir, kind: str, title: str) -> str:
    """Figures, evaluation, curves, metrics, configuration and data provenance of one VAE or GAN run."""
    if not run.config.is_file():
        return section(kind, title, "<p class='missing'>This stage has not produced a run folder yet.</p>")
    config = run.read_config()
    replicas = seed_runs(run)
    if replicas:
        return replica_section(run, kind, title, replicas)
    records = run.read_metrics()
    parts = []
    if records:
        last = records[-1]
        parts.append(f"<p>{escape(len(records))} epoch(s) trained; last epoch's metrics:</p>"
                     + table(list(last), [list(last.values())], "metrics"))
    evaluation = read_json_if_present(run.eval)
    if evaluation is not None:
        parts.append("<h3>Evaluation</h3>" + value_html(evaluation))
    figures = run_figures(run, kind)
    for name, png, caption in figures:
        parts.append(figure_html(png, caption, f"{title}: {name}"))
    if records and not any(name == CURVES_FIGURE[kind] for name, _, _ in figures):
        png = curves_png(records, f"{title}: training curves")
        if png is not None:
            parts.append(figure_html(png, "Training curves: the metrics of metrics.jsonl after each epoch.",
                                     f"{title}: training curves"))
    parts.append(grids_gallery(run))
    parts.append("<h3>Metrics by epoch</h3>" + metrics_table(records))
    parts.append("<h3>Configuration</h3>" + value_html(config.get("config", {}), settings=True))
    parts.append(data_part(run))
    return section(kind, title, "".join(parts))


def grids_gallery(run: RunDir, whose: str = "") -> str:
    """The GAN's saved 8x8 grids by epoch, folded ("" when the run has none)."""
    grids = sorted((run.path / "grids").glob("epoch_*.png")) if (run.path / "grids").is_dir() else []
    if not grids:
        return ""
    gallery = "".join(figure_html(p.read_bytes(), f"epoch {int(p.stem.split('_')[-1])}", p.name, "grid")
                      for p in grids)
    return details(f"all {len(grids)} grids{whose} from the fixed noise batch (8x8, by epoch)",
                   f'<div class="gallery">{gallery}</div>')


def data_part(run: RunDir) -> str:
    data = read_json_if_present(data_file(run))
    return "<h3>Data</h3>" + (data_html(data) if data is not None
                              else "<p class='missing'>No data.json in this run folder.</p>")


# --------------------------------------------------------------------------- replica runs: several seeds in one run


def seed_runs(run: RunDir) -> list[tuple[int, RunDir]]:
    """A replica run's seeds and their run folders RUN/seed=S, in order; [] for a single-seed run (or none yet)."""
    return run.replicas() if run.config.is_file() else []


def seed_folders(run: RunDir) -> dict[int | None, RunDir]:
    """{seed: RUN/seed=S} of a replica run; {None: the run} of a single-seed run."""
    return dict(seed_runs(run)) or {None: run}


def data_file(run: RunDir) -> Path:
    """A run's data.json; a replica run's is its first seed's when RUN has none (every seed reads the same data)."""
    replicas = seed_runs(run)
    return replicas[0][1].data if replicas and not run.data.is_file() else run.data


def interval_name(n: int) -> str:
    return f"95% Student-t interval over {n} seed{'' if n == 1 else 's'}"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def spread_html(values: Sequence[Any], seeds: int) -> Markup:
    """The mean ± the half-width of the 95% Student-t interval of the finite numbers among ``values`` (one per seed
    of ``seeds``; those a seed lacks are left out, and the count said), to 2 decimals from 100 on, else 4."""
    numbers = [float(v) for v in values if is_number(v) and math.isfinite(v)]
    if not numbers:
        return Markup("—")
    found = spread(numbers)
    digits = 2 if abs(found.mean) >= 100 else 4
    text = f"{found.mean:,.{digits}f}" + ("" if found.half_width is None else f" ± {found.half_width:,.{digits}f}")
    if len(numbers) < seeds:
        text += f" ({len(numbers)} of {seeds} seeds)"
    return Markup(f'<span class="spread" title="mean ± {escape(interval_name(len(numbers)))}">{escape(text)}</span>')


def across_seeds(values: dict[int, Any], plain: bool = False) -> tuple[Markup, Markup]:
    """One quantity of a replica run, ``{seed: value}``: (the value every seed shares, such as a setting, else a
    measurement's mean ± its 95% interval; each seed's value, "seed S: value; ..."). ``plain``: identifiers."""
    each = seeds_html({seed: value_html(value, plain) for seed, value in values.items()})
    listed = list(values.values())
    shared = {json.dumps(v, sort_keys=True) for v in listed}
    if len(shared) == 1:  # a setting (or a time) that is the same for every seed: no spread to show
        return value_html(listed[0], plain), each
    if any(isinstance(v, float) for v in listed):
        return spread_html(listed, len(listed)), each
    return Markup("differs by seed"), each


def seeds_html(values: dict[int, Markup]) -> Markup:
    """Each seed's value (already HTML): "seed S: value; ...", a line breaking only between seeds."""
    return Markup("; ".join(f'<span class="seed">seed {seed}: {value}</span>' for seed, value in values.items()))


def combined(values: dict[int | None, Any]) -> tuple[Any, Markup | None]:
    """A quantity of a single-seed run, ``{None: value}``, as it is (and no per-seed values), or of a replica run
    across its seeds (:func:`across_seeds`)."""
    if list(values) == [None]:
        return values[None], None
    return across_seeds(values)


def seed_evaluations(run: RunDir) -> dict[int | None, dict[str, Any] | None]:
    """The eval.json of each seed (RUN/seed=S/eval.json, else its entry in RUN/eval.json's "per_seed"), or of the
    single-seed run (seed None); None where there is none."""
    folders = seed_folders(run)
    if list(folders) == [None]:
        return {None: read_json_if_present(run.eval)}
    aggregate = read_json_if_present(run.eval)
    per_seed = aggregate.get("per_seed") if isinstance(aggregate, dict) else None
    per_seed = per_seed if isinstance(per_seed, dict) else {}
    found = {seed: read_json_if_present(folder.eval) or per_seed.get(str(seed)) for seed, folder in folders.items()}
    return {seed: result if isinstance(result, dict) else None for seed, result in found.items()}


def seeds_table(results: dict[int, dict[str, Any]]) -> str:
    """Each quantity (a row) of every seed (a column each), after their mean ± the 95% interval (for a count or a
    setting: the value every seed shares)."""
    keys = list(dict.fromkeys(k for result in results.values() for k in result))
    rows = []
    for key in keys:
        values = {seed: result.get(key) for seed, result in results.items()}
        centre, _ = across_seeds(values, is_plain_key(key))
        rows.append([key, centre, *(value_html(v, is_plain_key(key)) for v in values.values())])
    headers = ("quantity", f"mean ± {interval_name(len(results))}", *(f"seed {seed}" for seed in results))
    return table(headers, rows, "kv seeds")


def replica_figures(run: RunDir, kind: str, replicas: list[tuple[int, RunDir]]) -> list[tuple[str, bytes, str]]:
    """The figures of a replica run, each caption saying whose model it shows: RUN/figures (where the model commands
    draw the first seed's model, and the training curves of every seed), else the first seed's own figures but its
    single-seed training curves."""
    first_seed, first = replicas[0]
    one = f"Seed {first_seed}, the first of the {len(replicas)} seeds. "
    every = f"Every seed ({', '.join(str(seed) for seed, _ in replicas)}), one line per seed. "
    own = run_figures(run, kind)
    if own:
        return [(name, png, (every if name == CURVES_FIGURE[kind] else one) + caption) for name, png, caption in own]
    return [(name, png, one + caption) for name, png, caption in run_figures(first, kind)
            if name != CURVES_FIGURE[kind]]


def replica_section(run: RunDir, kind: str, title: str, replicas: list[tuple[int, RunDir]]) -> str:
    """A replica run: each seed's last epoch and evaluation after their mean ± 95% interval, the figures of the first
    seed, the training curves of every seed, each seed's metrics, the configuration and the data."""
    n, (first_seed, first) = len(replicas), replicas[0]
    histories = {seed: folder.read_metrics() for seed, folder in replicas}
    seeds = ", ".join(str(seed) for seed, _ in replicas)
    parts = [f"<p>{n} seeds ({seeds}) trained as replicas, each in its own run folder <code>seed=S/</code>. A number "
             f"measured on every seed is shown as the mean ± the half-width of its <b>{interval_name(n)}</b> "
             "(t<sub>0.975, n-1</sub> s / &radic;n, s the standard deviation over the seeds), then each seed's value. "
             f"The figures show seed {first_seed}, the first seed; the training curves show every seed.</p>"]
    last = {seed: records[-1] for seed, records in histories.items() if records}
    if last:
        parts.append("<p>Epochs trained and the last epoch's metrics of each seed:</p>" + seeds_table(last))
    evaluations = seed_evaluations(run)
    if any(result is not None for result in evaluations.values()):
        parts.append("<h3>Evaluation</h3>" + seeds_table({seed: result or {} for seed, result in evaluations.items()}))
    figures = replica_figures(run, kind, replicas)
    parts += [figure_html(png, caption, f"{title}: {name}") for name, png, caption in figures]
    if not any(name == CURVES_FIGURE[kind] for name, _, _ in figures):
        png = replica_curves_png(histories, f"{title}: training curves of {n} seeds")
        if png is not None:
            parts.append(figure_html(png, f"Training curves of every seed ({seeds}), one line per seed and metric "
                                          "(labelled seed S): the metrics of each seed's metrics.jsonl after each "
                                          "epoch.", f"{title}: training curves of {n} seeds"))
    parts.append(grids_gallery(first, f" of seed {first_seed} (the first seed)"))
    parts.append("<h3>Metrics by epoch</h3>" + "".join(
        f"<p>Seed {seed} (<code>seed={seed}/metrics.jsonl</code>):</p>" + metrics_table(records)
        for seed, records in histories.items()))
    parts.append("<h3>Configuration</h3>" + value_html(run.read_config().get("config", {}), settings=True))
    parts.append(data_part(run))
    return section(kind, title, "".join(parts))


def is_bundled_sample(provenance: dict[str, Any]) -> bool:
    """Whether a run's data.json says it used the 5,000-digit sample rather than a full dataset."""
    return provenance.get("dataset") == "mnist-sample" or bool(provenance.get("sample"))


def sample_banner(runs: dict[str, RunDir]) -> str:
    """A warning above the results when any model was trained on the bundled sample."""
    on_sample = [name.upper() for name, run in runs.items()
                 if data_file(run).is_file() and is_bundled_sample(read_json(data_file(run)))]
    if not on_sample:
        return ""
    parts = escape(", ".join(on_sample))
    return (f'<p class="banner"><b>Trained on the bundled 5,000-digit MNIST sample</b> ({parts}),'
            " not on full MNIST: its numbers are not comparable with the specification's (see each part's Data "
            "section for why; <code>mnistgen data fetch</code> gets the full dataset).</p>")


def data_html(provenance: dict[str, Any]) -> str:
    """Which dataset and files, their checksums, and whether it is the full data or the bundled sample."""
    dataset = provenance.get("dataset", "?")
    sample = is_bundled_sample(provenance)
    verdict = ("the bundled sample (not the full dataset): numbers are not comparable with SPEC's"
               if sample else "the full dataset")
    if sample and provenance.get("requested_dataset"):
        verdict += (f"; it stood in for {provenance['requested_dataset']}"
                    f" ({provenance.get('fallback_reason', 'reason not recorded')})")
    css = ' class="missing"' if sample else ""
    folder = provenance.get("folder")
    files = provenance.get("files")
    if folder and isinstance(files, list):  # a path that is just folder/name says nothing new: leave it out
        files = [{k: v for k, v in f.items() if not (k == "path" and v == str(Path(folder) / f.get("name", "")))}
                 if isinstance(f, dict) else f for f in files]
        provenance = {**provenance, "files": files}
    return f"<p{css}>Dataset <b>{escape(dataset)}</b>: {escape(verdict)}.</p>" + value_html(provenance)


# --------------------------------------------------------------------------- scores


def score_files(root: Path) -> list[Path]:
    """The *.score.json of a folder: the known sample sets in the order of SAMPLE_SET_TITLES, then the others."""
    folders = [root, root / "samples", root / "vae", root / "gan"]
    files = [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.score.json"))]
    order = list(SAMPLE_SET_TITLES)
    stem = lambda p: p.name[: -len(".score.json")]  # noqa: E731
    return sorted(files, key=lambda p: order.index(stem(p)) if stem(p) in order else len(order))


def score_stem(path: Path) -> str:
    return path.name[: -len(".score.json")]


def score_sets(root: Path, runs: dict[str, RunDir]) -> list[tuple[str, dict[int | None, Path]]]:
    """(title, {seed: NAME.score.json}) of each scored set of images: one file (seed None) of :func:`score_files`,
    or one per seed of a replica run, RUN/seed=S/NAME.score.json (``mnistgen score RUN``, a reproduction's samples);
    the known sets in the order of SAMPLE_SET_TITLES, then the others."""
    sets: list[tuple[str, dict[int | None, Path]]] = [
        (SAMPLE_SET_TITLES.get(score_stem(path), score_stem(path)), {None: path}) for path in score_files(root)]
    by_seed: dict[str, dict[int | None, Path]] = {}
    for name, run in runs.items():
        for seed, folder in seed_runs(run):
            for path in sorted(folder.path.glob("*.score.json")):
                title = SAMPLE_SET_TITLES.get(score_stem(path), f"{name.upper()}: {score_stem(path)}")
                by_seed.setdefault(title, {})[seed] = path
    order = list(SAMPLE_SET_TITLES)
    stem = lambda files: score_stem(next(iter(files.values())))  # noqa: E731
    return sorted([*sets, *by_seed.items()], key=lambda item: order.index(stem(item[1])) if stem(item[1]) in order
                  else len(order))


SCORE_FIELDS = ("n_images", "frechet_distance", "classifier_score", "class_histogram")  # in every score and reference


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages: string, number, object, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    names = {str: "a string", list: "a list", dict: "an object"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), type(value).__name__)


def score_problem(score: Any, where: str = "") -> str | None:
    """What is wrong with a score (or its real-vs-real reference, ``where`` its key) as mnistgen score writes it, or
    None: an object with a whole number of images, two numbers (null stands for NaN) and the counts of classes."""
    if not isinstance(score, dict):
        return f'"{where}" is {json_type(score)}, not an object' if where else f"it holds {json_type(score)}, " \
            "not an object"
    name = lambda key: f'"{where}.{key}"' if where else f'"{key}"'  # noqa: E731
    for key in SCORE_FIELDS:
        if key not in score:
            return f"no {name(key)}"
    count = score["n_images"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return f"{name('n_images')} is {json_type(count)}, not a count of images"
    for key in ("frechet_distance", "classifier_score"):
        value = score[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{name(key)} is {json_type(value)}, not a number"
    histogram = score["class_histogram"]
    if not isinstance(histogram, list):
        return f"{name('class_histogram')} is {json_type(histogram)}, not a list of counts"
    for count in histogram:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return f"{name('class_histogram')} holds {json_type(count)} {json.dumps(count)[:20]}, not a count"
    if not where:
        if "real_vs_real_reference" in score:
            problem = score_problem(score["real_vs_real_reference"], "real_vs_real_reference")
            if problem is not None:
                return problem
            what = score["real_vs_real_reference"].get("what", "")
            if not isinstance(what, str):
                return f'"real_vs_real_reference.what" is {json_type(what)}, not a string'
        if "classifier" in score and not isinstance(score["classifier"], dict):
            return f'"classifier" is {json_type(score["classifier"])}, not an object'
    return None


def read_score(path: Path) -> dict[str, Any]:
    """A FILE.score.json written by mnistgen score; anything else is one line naming the file (never a traceback)."""
    score = read_json(path)
    problem = score_problem(score)
    if problem is not None:
        raise MnistgenError(f"{path}: not a score written by mnistgen score ({problem}); score the images again "
                            "or remove the file")
    return score


def samples_preview(images_file: Path) -> bytes | None:
    """The first images of a scored .npy or .npz as one tiled PNG (None if the file is gone or not images)."""
    from .imaging import tile
    from .scoring import load_images

    if not images_file.is_file():
        return None
    try:
        images = load_images(images_file)  # checked as `score` checks it: (N, 28, 28), in [0, 1]
    except MnistgenError:
        return None  # not an array of images (the score was computed from another file, or it was replaced)
    rows, cols = SAMPLE_PREVIEW
    return array_png(tile(images[: rows * cols], rows, cols), SAMPLE_PREVIEW_SCALE)


def scores_section(root: Path, runs: dict[str, RunDir]) -> str:
    """The scores of every set of images beside the real-vs-real reference, and a preview of each set. A set scored
    for each seed of a replica run has a row of its mean ± 95% interval over the seeds, then one row per seed."""
    sets = [(title, {seed: (path, read_score(path)) for seed, path in files.items()})
            for title, files in score_sets(root, runs)]
    if not sets:
        return ""
    scores = [found for _, files in sets for found in files.values()]
    reference = next((s["real_vs_real_reference"] for _, s in scores if "real_vs_real_reference" in s), None)
    rows = []
    if reference is not None:
        rows.append([Markup(f"<b>real vs real</b> (reference: {escape(reference.get('what', ''))})"),
                     reference.get("n_images"), reference.get("frechet_distance"),
                     reference.get("classifier_score"), histogram_html(reference.get("class_histogram", []))])
    for title, files in sets:
        if list(files) != [None]:
            counts = {seed: score.get("n_images") for seed, (_, score) in files.items()}
            rows.append([Markup(f"<b>{escape(title)}</b>: mean ± {escape(interval_name(len(files)))}"),
                         across_seeds(counts)[0],
                         *(spread_html([score.get(key) for _, score in files.values()], len(files))
                           for key in ("frechet_distance", "classifier_score")), ""])
        rows += [[title if seed is None else f"{title}, seed {seed}", score.get("n_images"),
                  score.get("frechet_distance"), score.get("classifier_score"),
                  histogram_html(score.get("class_histogram", []))] for seed, (_, score) in files.items()]
    body = ("<p>Each set of images is passed through mnistgen's own MNIST classifier. <b>Frechet distance</b>: "
            "between the classifier's features of the images and of the 10,000 test images (lower is closer to "
            "MNIST; it grows as the number of images shrinks, so compare sets of equal size). <b>Classifier "
            "score</b>: exp(E KL(p(y|x) || p(y))), between 1 and 10 (higher: confident and balanced classes). "
            "The first row is real against real: the floor a perfect model would reach.</p>"
            + table(("images", "N", "Frechet distance", "classifier score", "predicted classes 0-9"), rows,
                    "scores"))
    classifier = next((s["classifier"] for _, s in scores if "classifier" in s), None)
    if classifier is not None:
        body += "<p>Classifier: " + value_html(classifier) + "</p>"
    previews = []
    for title, files in sets:
        seed, (path, _) = next(iter(files.items()))  # a replica run's: its first seed's
        stem = score_stem(path)
        png = next((preview for suffix in (".npz", ".npy")
                    if (preview := samples_preview(path.with_name(stem + suffix))) is not None), None)
        whose = "" if seed is None else f", seed {seed} (the first of {len(files)} seeds)"
        if png is not None:
            previews.append(figure_html(png, f"The first {SAMPLE_PREVIEW[0] * SAMPLE_PREVIEW[1]} of the scored "
                                        f"images: {title}{whose}.", stem if seed is None else f"{stem}, seed {seed}",
                                        "preview"))
    if previews:
        body += f'<div class="gallery">{"".join(previews)}</div>'
    return section("scores", "Sample quality", body)


def histogram_html(counts: Sequence[int]) -> Markup:
    """Class counts as a row of small bars with the count under each digit."""
    if not counts:
        return Markup("—")
    top = max(max(counts), 1)
    bars = "".join(
        f'<span class="bar" title="digit {d}: {format_value(c)}"><span style="height:{round(30 * c / top)}px">'
        f"</span><small>{d}</small></span>" for d, c in enumerate(counts))
    listed = ", ".join(format_value(c) for c in counts)
    return Markup(f'<span class="hist">{bars}</span> <small>{escape(listed)}</small>')


# --------------------------------------------------------------------------- stages, versions, machine


def stages_section(stages: dict[str, Any] | None) -> str:
    if not stages:
        return ""
    rows = []
    total = 0.0
    for name, record in stages.get("stages", {}).items():
        seconds = record.get("seconds")
        total += seconds or 0.0
        rows.append([name, record.get("status"), duration(seconds), record.get("started"), record.get("finished"),
                     record.get("error") or record.get("note") or ""])
    rows.append([Markup("<b>total</b>"), "", duration(total), "", "", ""])
    command = stages.get("command")
    body = (f"<p>Command: <code>{escape(' '.join(command))}</code></p>" if command else "")
    return section("stages", "Stages and time", body + table(("stage", "status", "time", "started", "finished", "note"),
                                                             rows, "stages"))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def library_versions() -> dict[str, str]:
    """mnistgen's version and that of each of LIBRARIES that is installed: an optional library that is absent
    was not used to build the page, so it is left out rather than listed as a fault."""
    versions = {"mnistgen": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def environment_section(environments: dict[str, dict[str, Any]]) -> str:
    """The versions and machine recorded by each run, side by side (one column per run), then the page's libraries."""
    keys = list(dict.fromkeys(k for env in environments.values() for k in env))
    rows = [[key, *[value_html(env.get(key)) for env in environments.values()]] for key in keys]
    body = table(("", *environments), rows, "kv") if environments else ""
    body += "<h3>Libraries used to build this page</h3>" + value_html(library_versions())
    return section("environment", "Versions and machine", body)


# --------------------------------------------------------------------------- the page


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:1.5rem 2rem 4rem}
header{background:#16324f;color:#fff;padding:1.2rem 2rem}
header h1{margin:0 0 .3rem;font-size:1.6rem} header p{margin:.1rem 0;opacity:.85}
header code{background:#2a4a6b;color:#fff} header a{color:#fff}
nav{background:#e8eef5;padding:.5rem 2rem;position:sticky;top:0;z-index:1}
nav a{margin-right:1.2rem;color:#16324f;text-decoration:none;font-weight:600}
section{background:#fff;border:1px solid #e2e2e2;border-radius:8px;padding:1rem 1.5rem;margin:1.2rem 0}
h2{margin-top:.2rem;color:#16324f} h3{color:#34495e}
figure{margin:1rem 0;text-align:center} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.92rem;color:#444;max-width:800px;margin:.4rem auto;text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:.6rem} .gallery figure{margin:.3rem}
.gallery figcaption{text-align:center}
figure.grid img{width:180px;image-rendering:pixelated}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{white-space:nowrap} .token{word-break:break-all;font-family:ui-monospace,monospace;font-size:.82rem}
section{overflow-x:auto}
th{background:#f1f4f8} td{font-variant-numeric:tabular-nums}
table.kv table.kv{font-size:.85rem;margin:0} table.summary td:nth-child(3){white-space:nowrap}
.banner{background:#fff4d6;border:1px solid #e0b84c;border-radius:6px;padding:.6rem 1rem;margin:1rem 0 0}
.hist{display:inline-flex;align-items:flex-end;gap:2px;height:44px;vertical-align:bottom}
.bar{display:inline-flex;flex-direction:column;align-items:center;justify-content:flex-end;width:12px}
.bar span{display:block;width:10px;background:#3b7dd8}
.bar small{font-size:9px;color:#555}
.missing{color:#a33} code{background:#f3f3f3;padding:0 .2rem}
details{margin:.5rem 0} summary{cursor:pointer;color:#16324f}
.spread,.seed{white-space:nowrap}
"""


def page(title: str, subtitle: Sequence[str], sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: sections are (anchor, nav label, html)."""
    present = [(a, label, body) for a, label, body in sections if body]
    nav = "".join(f'<a href="#{escape(a)}">{escape(label)}</a>' for a, label, _ in present)
    sub = "".join(f"<p>{line}</p>" for line in subtitle)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>{sub}</header><nav>{nav}</nav><main>"
        + "".join(body for _, _, body in present)
        + "</main></body></html>\n"
    )


def summary_section(root: Path, runs: dict[str, RunDir]) -> str:
    """The headline numbers of each part, one table: what was measured, its value, and how to read it. A replica
    run's measurement is the mean ± its 95% interval over the seeds, each seed's value in a column beside it."""
    rows = []  # [part, quantity, value, each seed's value (None for a single-seed run), how to read it]
    for name, part_rows in (("vae", vae_summary_rows), ("gan", gan_summary_rows)):
        run = runs.get(name)
        if run is not None and run.config.is_file():
            rows += part_rows(run)
    rows += score_summary_rows(root, runs)
    if not rows:
        return ""
    if all(each is None for _, _, _, each, _ in rows):
        return section("summary", "Results at a glance", table(("part", "quantity", "value", "how to read it"),
                                                               ([p, q, v, note] for p, q, v, _, note in rows),
                                                               "summary"))
    replicated = [f"{name.upper()}: the {interval_name(len(found))} ({', '.join(str(seed) for seed, _ in found)})"
                  for name, run in runs.items() if (found := seed_runs(run))]
    intro = ("<p>Each number measured on several seeds is their mean ± the half-width of its 95% Student-t interval "
             f"(t<sub>0.975, n-1</sub> s / &radic;n), then each seed's value: {escape('; '.join(replicated))}. A "
             "count or a setting that every seed shares is shown once.</p>")
    return section("summary", "Results at a glance",
                   intro + table(("part", "quantity", "mean ± 95% interval", "each seed", "how to read it"),
                                 ([p, q, v, "—" if each is None else each, note] for p, q, v, each, note in rows),
                                 "summary"))


def vae_summary_rows(run: RunDir) -> list[list[Any]]:
    """Epochs, then the evaluation's headline numbers, else the last epoch's ELBOs (of each seed of a replica run)."""
    histories = {seed: folder.read_metrics() for seed, folder in seed_folders(run).items()}
    rows = [["VAE", "epochs trained", *combined({seed: len(records) for seed, records in histories.items()}),
             epochs_note(run, "vae")]]
    evaluations = seed_evaluations(run)
    if any(result is not None for result in evaluations.values()):
        keys = dict.fromkeys(k for result in evaluations.values() if result for k in result if k in SUMMARY_LABELS)
        rows += [["VAE", SUMMARY_LABELS[k], *combined({seed: (result or {}).get(k)
                                                        for seed, result in evaluations.items()}),
                  SUMMARY_NOTES.get(k, "")] for k in keys]
    elif any(histories.values()):
        last = {seed: records[-1] if records else {} for seed, records in histories.items()}
        keys = dict.fromkeys(k for record in last.values() for k in record if k.endswith("elbo"))
        rows += [["VAE", f"{k} (last epoch)", *combined({seed: record.get(k) for seed, record in last.items()}),
                  LAST_EPOCH_NOTES.get(k, LAST_EPOCH_NOTE)] for k in keys]
    return rows


def gan_summary_rows(run: RunDir) -> list[list[Any]]:
    """Epochs, then the last epoch's numbers (of each seed of a replica run)."""
    histories = {seed: folder.read_metrics() for seed, folder in seed_folders(run).items()}
    rows = [["GAN", "epochs trained", *combined({seed: max((r.get("epoch", 0) for r in records), default=0)
                                                 for seed, records in histories.items()}), epochs_note(run, "gan")]]
    last = {seed: records[-1] if records else {} for seed, records in histories.items()}
    keys = dict.fromkeys(k for record in last.values() for k, v in record.items()
                         if k not in ("epoch", "seconds") and is_number(v) and not k.endswith("seconds"))
    rows += [["GAN", f"{k} (last epoch)", *combined({seed: record.get(k) for seed, record in last.items()}),
              LAST_EPOCH_NOTES.get(k, LAST_EPOCH_NOTE)] for k in keys]
    return rows


def score_summary_rows(root: Path, runs: dict[str, RunDir]) -> list[list[Any]]:
    """The real-vs-real reference, then the Frechet distance and classifier score of each scored set of images (over
    the seeds of a replica run)."""
    rows: list[list[Any]] = []
    reference_shown = False
    for title, files in score_sets(root, runs):
        scores = {seed: read_score(path) for seed, path in files.items()}
        reference = next((s["real_vs_real_reference"] for s in scores.values() if s.get("real_vs_real_reference")), {})
        if reference and not reference_shown:
            rows.append(["score", "real vs real: Frechet distance / classifier score",
                         Markup(f"{format_value(reference.get('frechet_distance'))} / "
                                f"{format_value(reference.get('classifier_score'))}"), None,
                         "the floor: real training images against the real test images"])
            reference_shown = True
        pair = {seed: Markup(f"{format_value(s.get('frechet_distance'))} / {format_value(s.get('classifier_score'))}")
                for seed, s in scores.items()}
        value, each = pair.get(None), None
        if None not in pair:
            value = Markup(" / ".join(spread_html([s.get(key) for s in scores.values()], len(scores))
                                      for key in ("frechet_distance", "classifier_score")))
            each = seeds_html(pair)
        rows.append(["score", f"{title}: Frechet distance / classifier score", value, each,
                     "distance: lower is closer to MNIST; score: up to 10"])
    return rows


SUMMARY_LABELS = {
    "test_elbo": "test ELBO (nats per image)",
    "test_iw_log_likelihood": "test log p(x), importance-weighted estimate",
    "iw_samples": "K, importance samples per image",
    "train_elbo": "training ELBO (nats per image)",
}
SUMMARY_NOTES = {
    "test_elbo": "higher is better; SPEC's reference run reaches -162.0 after 200 epochs",
    "test_iw_log_likelihood": "a tighter lower bound on log p(x) than the ELBO; reference -151.0 (K = 1000)",
    "train_elbo": "reference -148.7; far above the test ELBO means over-fitting",
    "iw_samples": "more samples give a tighter estimate of log p(x); SPEC uses K = 1000",
}
# "How to read it" of the last epoch's metrics. At the GAN's equilibrium (G's images indistinguishable from real
# ones) the best D outputs 1/2 everywhere: D's cross-entropy is log 2 on each of its two batches, G's is log 2.
LAST_EPOCH_NOTES = {
    "train_elbo": "mean ELBO over the epoch's training steps, nats per image; higher is better",
    "test_elbo": "ELBO on the test images after the epoch, nats per image; higher is better",
    "validation_elbo": "ELBO on the validation images after the epoch, nats per image; higher is better",
    "d_loss": "D's cross-entropy, -log D(x) - log(1 - D(G(z))), mean over the epoch's steps; "
              "2 log 2 \u2248 1.386 at the equilibrium D = 1/2; near 0: D wins, G has stopped learning",
    "g_loss": "G's non-saturating loss -log D(G(z)), mean over the epoch's steps; log 2 \u2248 0.693 at the "
              "equilibrium; large: D rejects G's images",
    "d_real": "mean D(x), D's probability of 'real' on real images; 1/2 at the equilibrium, near 1 while D "
              "still tells them apart",
    "d_fake": "mean D(G(z)), D's probability of 'real' on generated images; 1/2 at the equilibrium, near 0 "
              "while D still tells them apart",
}
LAST_EPOCH_NOTE = "the last epoch's value in metrics.jsonl (see the curves below)"


def epochs_note(run: RunDir, kind: str) -> str:
    """How far the run got: the epochs its configuration asked for, and SPEC's."""
    from .config import GANConfig, VAEConfig

    spec = (VAEConfig() if kind == "vae" else GANConfig()).epochs
    asked = run.read_config().get("config", {}).get("epochs")
    configured = f"of {asked} configured; " if isinstance(asked, int) and not isinstance(asked, bool) else ""
    return f"{configured}SPEC trains {spec}"


def shortened_banner(kind: str, settings: dict[str, Any]) -> str:
    """A warning above the results when a reproduction trained for fewer epochs than SPEC's defaults."""
    from .config import ReproduceConfig

    if kind != "reproduce":
        return ""
    defaults = ReproduceConfig()
    short = [f"{name.replace('_', ' ')} {settings[name]} (SPEC: {getattr(defaults, name)})"
             for name in ("vae_epochs", "gan_epochs") if settings.get(name, getattr(defaults, name)) < getattr(
                 defaults, name)]
    if not short:
        return ""
    return (f'<p class="banner"><b>A shortened run</b> ({escape("; ".join(short))}), e.g. mnistgen reproduce '
            "--quick: a first look at the whole pipeline. Its numbers are far from the specification's; run "
            "<code>mnistgen reproduce</code> without --quick for those.</p>")


def folder_runs(root: Path, kind: str) -> dict[str, RunDir]:
    """The run folders a report covers: the reproduction's vae/ and gan/, or the folder itself."""
    if kind == "reproduce":
        return {"vae": RunDir(root / "vae"), "gan": RunDir(root / "gan")}
    if kind in ("vae", "gan"):
        return {kind: RunDir(root)}
    raise MnistgenError(f"{root}: a {kind!r} folder; report works on a reproduction, VAE or GAN run folder")


def build_report(folder: str | Path) -> str:
    """The HTML of the report on ``folder`` (a reproduction folder, or one VAE or GAN run folder)."""
    root = RunDir(folder).path
    if not root.is_dir():
        raise MnistgenError(f"{root}: no such folder")
    if not (root / "config.json").is_file():
        raise MnistgenError(f"{root}: not a reproduction or run folder (no config.json)")
    top = read_json(root / "config.json")
    kind = top.get("kind") if isinstance(top, dict) else None
    runs = folder_runs(root, kind)
    stages = read_json_if_present(root / "stages.json")
    environments = {f"{name.upper()} training": run.read_config().get("environment", {})
                    for name, run in runs.items() if run.config.is_file()}
    if kind == "reproduce":
        environments = {"reproduction started": top.get("environment", {}), **environments}
    subtitle = [f"Folder: <code>{escape(root)}</code>",
                f"mnistgen {escape(top.get('mnistgen_version', '?'))}; page built "
                f"{escape(time.strftime('%Y-%m-%d %H:%M:%S %z'))}"]
    if kind == "reproduce":
        subtitle.append("Settings: " + escape(json.dumps({k: v for k, v in top.get("config", {}).items()
                                                           if k != "data"})))
        if (root / "explorer.html").is_file():
            subtitle.append('Interactive latent explorer: <a href="explorer.html">explorer.html</a>')
    titles = {"vae": "VAE (SPEC §2)", "gan": "GAN (SPEC §3)"}
    banners = shortened_banner(kind, top.get("config", {})) + sample_banner(runs)
    sections = [("summary", "Summary", banners + summary_section(root, runs))]
    sections += [(name, titles[name], run_section(run, name, titles[name])) for name, run in runs.items()]
    sections.append(("scores", "Sample quality", scores_section(root, runs)))
    if kind == "reproduce":
        from .report_beyond import beyond_section

        sections.append(("beyond", "Beyond the spec", beyond_section(root)))
    sections += [("stages", "Time", stages_section(stages)),
                 ("environment", "Versions", environment_section(environments))]
    title = {"reproduce": "mnistgen: reproduction of the specification", "vae": "mnistgen: VAE run",
             "gan": "mnistgen: GAN run"}[kind]
    return page(title, subtitle, sections)


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Build the report on ``folder`` and write it (default ``folder/report.html``); returns the path."""
    text = build_report(folder)
    path = Path(out).expanduser().resolve() if out else RunDir(folder).path / "report.html"
    atomic_write(path, lambda h: h.write(text), mode="w")
    return path
