"""The sections of the report on SPEC's runs: results at a glance, each run, sample quality, time and versions."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import GANConfig, ReproduceConfig, VAEConfig
from ..errors import MnistgenError
from ..evaluate.replicas import seed_folders
from ..files import figure_png, read_json
from ..imaging import tile
from ..plots.report import history_curves
from ..pretrained import headline, manifest
from ..runs import RunDir
from ..scoring import BALANCE_LABELS, ReferenceScore, SetScore, load_images, worst_seeds
from ..version import __version__
from .html import (
    Markup,
    across_seeds,
    array_png,
    details,
    duration,
    escape,
    figure_html,
    format_value,
    histogram_html,
    interval_name,
    measured,
    number_format,
    section,
    seeds_html,
    seeds_table,
    table,
    value_html,
)
from .results import ScoredSet, data_file, is_bundled_sample, read_json_if_present, seed_evaluations

LIBRARIES = ("torch", "numpy", "matplotlib", "pillow", "tqdm", "platformdirs")
SAMPLE_PREVIEW = (6, 12)  # rows x columns of the preview of each scored sample set
SAMPLE_PREVIEW_SCALE = 2  # pixels per image pixel in that preview
METRIC_ROWS_SHOWN = 12  # per-epoch tables longer than this are folded (the full table stays in the page)
METRIC_ROWS_FOLDED = 3  # the last epochs shown above a folded table
SPEC_EPOCHS = {"vae": VAEConfig.epochs, "gan": GANConfig.epochs}
MODEL_TITLES = {"vae": "VAE (SPEC §2)", "gan": "GAN (SPEC §3)"}

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
SCORE_KEYS = ("frechet_distance", "classifier_score")  # a score's headline numbers
TABLE_KEYS = (*SCORE_KEYS, *BALANCE_LABELS)  # those of the scores table: and the class balance
SCORE_ROWS = {  # the rows of each scored set in the results at a glance: (its numbers, how to read them)
    "Frechet distance / classifier score": (SCORE_KEYS, "distance: lower is closer to MNIST; score: up to 10"),
    "class TV to uniform / min class share": (TABLE_KEYS[2:], "TV: 0 balanced, 0.9 one digit; share: 0.1 balanced"),
}
SUMMARY_ROWS = {  # the evaluation's headline numbers: (what was measured, how to read it)
    "test_elbo": ("test ELBO (nats per image)",
                  "higher is better; SPEC's reference run reaches -162.0 after 200 epochs"),
    "test_iw_log_likelihood": ("test log p(x), importance-weighted estimate",
                               "a tighter lower bound on log p(x) than the ELBO; reference -151.0 (K = 1000)"),
    "iw_samples": ("K, importance samples per image",
                   "more samples give a tighter estimate of log p(x); SPEC uses K = 1000"),
    "train_elbo": ("training ELBO (nats per image)", "reference -148.7; far above the test ELBO means over-fitting"),
}
# "How to read it" of the last epoch's metrics; at the GAN's equilibrium the best D outputs 1/2 everywhere
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


def shortened_banner(settings: dict[str, Any]) -> str:
    """A warning above the results when a reproduction trained for fewer epochs than SPEC's defaults."""
    spec = {name: getattr(ReproduceConfig(), name) for name in ("vae_epochs", "gan_epochs")}
    short = [f"{name.replace('_', ' ')} {settings[name]} (SPEC: {default})" for name, default in spec.items()
             if settings.get(name, default) < default]
    if not short:
        return ""
    return (f'<p class="banner"><b>A shortened run</b> ({escape("; ".join(short))}), e.g. mnistgen reproduce '
            "--quick: a first look at the whole pipeline. Its numbers are far from the specification's; run "
            "<code>mnistgen reproduce</code> without --quick for those. What full trainings give, as measured on "
            "mnistgen's pretrained models (<code>mnistgen pretrained list</code>): "
            f"{escape('; '.join(headline(name) for name in manifest()))}.</p>")


def sample_banner(runs: dict[str, RunDir]) -> str:
    """A warning above the results when any model was trained on the bundled sample."""
    on_sample = [name.upper() for name, run in runs.items()
                 if data_file(run).is_file() and is_bundled_sample(read_json(data_file(run)))]
    if not on_sample:
        return ""
    return (f'<p class="banner"><b>Trained on the bundled 5,000-digit MNIST sample</b> ({escape(", ".join(on_sample))})'
            ", not on full MNIST: its numbers are not comparable with the specification's (see each part's Data "
            "section for why; <code>mnistgen data fetch</code> gets the full dataset).</p>")


def summary_section(runs: dict[str, RunDir], sets: list[ScoredSet]) -> str:
    """The headline numbers of each part, one table: what was measured, its value (each seed's too), how to read it."""
    rows = []  # [part, quantity, value, each seed's value (None for a single-seed run), how to read it]
    for kind, run in runs.items():
        if run.config.is_file():
            rows += model_summary_rows(kind, run)
    reference = first_reference(sets)
    for label, (keys, _) in SCORE_ROWS.items():
        if reference is not None:
            rows.append(["score", f"real vs real: {label}", score_pair({None: reference}, keys), None,
                         "the floor: real training images against the real test images"])
    rows += [["score", f"{found.title}: {label}", score_pair(found.scores, keys),
              each_seed_pair(found.scores, keys=keys), note]
             for found in sets for label, (keys, note) in SCORE_ROWS.items()]
    if not rows:
        return ""
    if all(each is None for _, _, _, each, _ in rows):
        body = table(("part", "quantity", "value", "how to read it"), ([p, q, v, note] for p, q, v, _, note in rows),
                     "summary", by_row=True)
        return section("summary", "Results at a glance", body)
    replicated = [f"{kind.upper()}: the {interval_name(len(folders))} ({', '.join(str(seed) for seed in folders)})"
                  for kind, run in runs.items() if None not in (folders := seed_folders(run))]
    intro = ("<p>Each number measured on several seeds is their mean ± the half-width of its 95% Student-t interval "
             f"(t<sub>0.975, n-1</sub> s / &radic;n), then each seed's value: {escape('; '.join(replicated))}. A "
             "count or a setting that every seed shares is shown once.</p>")
    body = table(("part", "quantity", "mean ± 95% interval", "each seed", "how to read it"),
                 ([p, q, v, "—" if each is None else each, note] for p, q, v, each, note in rows), "summary",
                 by_row=True)
    return section("summary", "Results at a glance", intro + body)


def model_summary_rows(kind: str, run: RunDir) -> list[list[Any]]:
    """Epochs, then the evaluation's headline numbers, else the last epoch's (of each seed of a replica run)."""
    part, histories = kind.upper(), {seed: folder.read_metrics() for seed, folder in seed_folders(run).items()}
    asked = run.read_config()["config"].get("epochs")
    configured = f"of {asked} configured; " if isinstance(asked, int) and not isinstance(asked, bool) else ""
    rows = [[part, "epochs trained", *across_seeds({seed: len(records) for seed, records in histories.items()}),
             f"{configured}SPEC trains {SPEC_EPOCHS[kind]}"]]
    evaluations = seed_evaluations(run)
    if any(result is not None for result in evaluations.values()):
        found, labels = {seed: result or {} for seed, result in evaluations.items()}, SUMMARY_ROWS
    else:
        found = {seed: records[-1] if records else {} for seed, records in histories.items()}
        labels = {k: (f"{k} (last epoch)", note) for k, note in LAST_EPOCH_NOTES.items()}
    keys = dict.fromkeys(k for record in found.values() for k in record if k in labels)
    return rows + [[part, labels[k][0], *across_seeds({seed: record.get(k) for seed, record in found.items()}),
                    labels[k][1]] for k in keys]


def score_cells(scores: dict[int | None, SetScore], keys: tuple[str, ...] = SCORE_KEYS) -> list[Any]:
    """The numbers ``keys`` of a set's score; of seeds, the mean ± interval (the class balance's: and the worst)."""
    found = {seed: score.as_json() for seed, score in scores.items()}
    worst = {} if None in scores else worst_seeds(found)
    cells = {key: measured({seed: numbers[key] for seed, numbers in found.items()}) for key in keys}
    return [Markup(f"{format_value(cell)}<br><small>worst: seed {worst[key]['seed']}, "
                   f"{worst[key]['value']:.4f}</small>")
            if key in worst else cell for key, cell in cells.items()]


def score_pair(scores: dict[int | None, SetScore], keys: tuple[str, ...] = SCORE_KEYS) -> Markup:
    return Markup(" / ".join(format_value(cell) for cell in score_cells(scores, keys)))


def each_seed_pair(scores: dict[int | None, SetScore], column: Sequence[dict[int | None, SetScore]] = (),
                   keys: tuple[str, ...] = SCORE_KEYS) -> Markup | None:
    """"seed S: distance / score; ..." of a replica run's set, in the format of the sets of its ``column``."""
    if None in scores:
        return None
    every = [score.as_json() for found in column or [scores] for score in found.values()]
    formats = [number_format([numbers[key] for numbers in every]) for key in keys]
    return seeds_html({seed: Markup(" / ".join(form(numbers[key]) for form, key in zip(formats, keys, strict=True)))
                       for seed, numbers in ((seed, s.as_json()) for seed, s in scores.items())})


def run_figures(run: RunDir, kind: str) -> list[tuple[str, bytes, str]]:
    """(file name, PNG bytes, caption) of the run's figures/*.png, the known figures first in SPEC order."""
    order = [name for (k, name) in CAPTIONS if k == kind]
    files = sorted(run.figures.glob("*.png"), key=lambda p: (order.index(p.name) if p.name in order
                                                           else len(order), p.name))
    return [(p.name, p.read_bytes(), CAPTIONS.get((kind, p.name), f"{p.stem.replace('_', ' ')} ({p.name})"))
            for p in files]


def seed_figures(run: RunDir, kind: str, folders: dict[int | None, RunDir]) -> list[tuple[str, bytes, str]]:
    """The figures of a run; a replica run's, from RUN/figures or else its first seed's, say whose model they show."""
    first_seed, first = next(iter(folders.items()))
    own = run_figures(run, kind)
    if first_seed is None:
        return own
    one = f"Seed {first_seed}, the first of the {len(folders)} seeds. "
    every = f"Every seed ({', '.join(str(seed) for seed in folders)}), one line per seed. "
    if own:
        return [(name, png, (every if name == CURVES_FIGURE[kind] else one) + caption) for name, png, caption in own]
    return [(name, png, one + caption) for name, png, caption in run_figures(first, kind)
            if name != CURVES_FIGURE[kind]]


def metrics_table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "<p class='missing'>No metrics recorded.</p>"
    headers = list(dict.fromkeys(k for r in records for k in r))
    rows = [[r.get(h) for h in headers] for r in records]
    if len(rows) <= METRIC_ROWS_SHOWN:
        return table(headers, rows, "metrics")
    return (table(headers, rows[-METRIC_ROWS_FOLDED:], "metrics")
            + details(f"all {len(rows)} epochs", table(headers, rows, "metrics")))


def numbers_part(histories: dict[int | None, list[dict[str, Any]]],
                 evaluations: dict[int | None, dict[str, Any] | None]) -> str:
    """The last epoch's metrics and the evaluation of a run; of a replica run, each quantity's :func:`seeds_table`."""
    if None in histories:
        records, evaluation = histories[None], evaluations[None]
        return ((f"<p>{escape(len(records))} epoch(s) trained; last epoch's metrics:</p>"
                 + table(list(records[-1]), [list(records[-1].values())], "metrics") if records else "")
                + ("" if evaluation is None else "<h3>Evaluation</h3>" + value_html(evaluation)))
    n, seeds = len(histories), ", ".join(str(seed) for seed in histories)
    parts = [f"<p>{n} seeds ({seeds}) trained as replicas, each in its own run folder <code>seed=S/</code>. A number "
             f"measured on every seed is shown as the mean ± the half-width of its <b>{interval_name(n)}</b> "
             "(t<sub>0.975, n-1</sub> s / &radic;n, s the standard deviation over the seeds), then each seed's value. "
             f"The figures show seed {next(iter(histories))}, the first seed; the training curves show every seed.</p>"]
    last = {seed: records[-1] for seed, records in histories.items() if records}
    if last:
        parts.append("<p>Epochs trained and the last epoch's metrics of each seed:</p>" + seeds_table(last))
    if any(result is not None for result in evaluations.values()):
        parts.append("<h3>Evaluation</h3>" + seeds_table({seed: result or {} for seed, result in evaluations.items()}))
    return "".join(parts)


def run_section(run: RunDir, kind: str) -> str:
    """Numbers, figures, curves, metrics, configuration and data provenance of one VAE or GAN run (of each seed)."""
    title = MODEL_TITLES[kind]
    if not run.config.is_file():
        return section(kind, title, "<p class='missing'>This stage has not produced a run folder yet.</p>")
    folders = seed_folders(run)
    histories = {seed: folder.read_metrics() for seed, folder in folders.items()}
    first_seed, first = next(iter(folders.items()))
    parts = [numbers_part(histories, seed_evaluations(run))]
    figures = seed_figures(run, kind, folders)
    parts += [figure_html(png, caption, f"{title}: {name}") for name, png, caption in figures]
    whose = "" if first_seed is None else f" of {len(folders)} seeds"
    if not any(name == CURVES_FIGURE[kind] for name, _, _ in figures):  # no curves of its own: the report draws them
        curves = history_curves(histories, f"{title}: training curves{whose}")
        caption = ("Training curves: the metrics of metrics.jsonl after each epoch." if first_seed is None else
                   f"Training curves of every seed ({', '.join(map(str, folders))}), one line per seed and metric "
                   "(labelled seed S): the metrics of each seed's metrics.jsonl after each epoch.")
        if curves is not None:
            parts.append(figure_html(figure_png(curves), caption, f"{title}: training curves{whose}"))
    grids = sorted(first.grids.glob("epoch_*.png"))  # a GAN run's, by epoch
    if grids:
        gallery = "".join(figure_html(p.read_bytes(), f"epoch {int(p.stem.split('_')[-1])}", p.name, "grid")
                          for p in grids)
        of_seed = "" if first_seed is None else f" of seed {first_seed} (the first seed)"
        parts.append(details(f"all {len(grids)} grids{of_seed} from the fixed noise batch (8x8, by epoch)",
                             f'<div class="gallery">{gallery}</div>'))
    parts.append("<h3>Metrics by epoch</h3>" + "".join(
        ("" if seed is None else f"<p>Seed {seed} (<code>seed={seed}/metrics.jsonl</code>):</p>")
        + metrics_table(records) for seed, records in histories.items()))
    parts.append("<h3>Configuration</h3>" + value_html(run.read_config().get("config", {}), settings=True))
    provenance = read_json_if_present(data_file(run))
    parts.append("<h3>Data</h3>" + (data_html(provenance) if provenance is not None
                                    else "<p class='missing'>No data.json in this run folder.</p>"))
    return section(kind, title, "".join(parts))


def data_html(provenance: dict[str, Any]) -> str:
    """Which dataset and files, their checksums, and whether it is the full data or the bundled sample."""
    sample, provenance = is_bundled_sample(provenance), dict(provenance)
    verdict = ("the bundled sample (not the full dataset): numbers are not comparable with SPEC's"
               if sample else "the full dataset")
    if sample and provenance.get("requested_dataset"):  # said here, so not again in the table below
        verdict += (f"; it stood in for {provenance.pop('requested_dataset')}"
                    f" ({provenance.pop('fallback_reason', 'reason not recorded')})")
    folder, files = provenance.get("folder"), provenance.get("files")
    if folder and isinstance(files, list):  # a path that is just folder/name says nothing new: leave it out
        files = [{k: v for k, v in f.items() if not (k == "path" and v == str(Path(folder) / f.get("name", "")))}
                 if isinstance(f, dict) else f for f in files]
        provenance = {**provenance, "files": files}
    css = ' class="missing"' if sample else ""
    return f"<p{css}>Dataset <b>{escape(provenance.get('dataset', '?'))}</b>: {escape(verdict)}.</p>" + value_html(
        provenance)


def first_reference(sets: list[ScoredSet]) -> ReferenceScore | None:
    return next((score.reference for found in sets for score in found.scores.values() if score.reference), None)


def samples_preview(found: ScoredSet) -> bytes | None:
    """The first images of a set (NAME.npz, else NAME.npy, beside its first score file) as one tiled PNG, or None."""
    for path in (found.folder / f"{found.name}.npz", found.folder / f"{found.name}.npy"):
        try:
            images = load_images(path)  # checked as `score` checks it: (N, 28, 28), in [0, 1]
        except MnistgenError:
            continue  # gone, or not images (the score was computed from another file, or it was replaced)
        rows, cols = SAMPLE_PREVIEW
        return array_png(tile(images[: rows * cols], rows, cols), SAMPLE_PREVIEW_SCALE)
    return None


def scores_section(sets: list[ScoredSet], stages: dict[str, Any] | None = None) -> str:
    """The scores of every set of images beside the real-vs-real reference, a preview of each (none: why if skipped)."""
    if not sets:
        record = (stages or {}).get("stages", {}).get("scores", {})
        return section("scores", "Sample quality", f"<p class='missing'>Not scored: {escape(record.get('note'))}.</p>"
                       ) if record.get("status") == "skipped" else ""
    reference = first_reference(sets)
    rows = []
    if reference is not None:
        rows.append([Markup(f"<b>real vs real</b> (reference: {escape(reference.what)})"), reference.n_images,
                     *score_cells({None: reference}, TABLE_KEYS), histogram_html(reference.class_histogram)])
    for found in sets:
        if None not in found.scores:
            rows.append([Markup(f"<b>{escape(found.title)}</b>: mean ± {escape(interval_name(len(found.scores)))}"),
                         across_seeds({seed: score.n_images for seed, score in found.scores.items()})[0],
                         *score_cells(found.scores, TABLE_KEYS), ""])
        rows += [[found.title if seed is None else f"{found.title}, seed {seed}", score.n_images,
                  *score_cells({None: score}, TABLE_KEYS), histogram_html(score.class_histogram)]
                 for seed, score in found.scores.items()]
    body = ("<p>Each set of images is passed through mnistgen's own MNIST classifier. <b>Frechet distance</b>: "
            "between the classifier's features of the images and of the 10,000 test images (lower is closer to "
            "MNIST; it grows as the number of images shrinks, so compare sets of equal size). <b>Classifier "
            "score</b>: exp(E KL(p(y|x) || p(y))), between 1 and 10 (higher: confident and balanced classes). <b>Class "
            "TV</b>: the total variation distance of the predicted classes' shares from uniform (0: each digit a "
            "tenth; 0.9: one digit), and the <b>smallest share</b>; of seeds, with the worst seed. The first row is "
            "real against real: the floor a perfect model would reach.</p>"
            + table(("images", "N", "Frechet distance", "classifier score", "class TV to uniform", "min class share",
                     "predicted classes 0-9"), rows, "scores"))
    classifier = next((score.classifier for found in sets for score in found.scores.values()
                       if score.classifier is not None), None)
    if classifier is not None:
        body += "<p>Classifier: " + value_html(classifier) + "</p>"
    previews = []
    for found in sets:
        seed, png = next(iter(found.scores)), samples_preview(found)  # a replica run's: its first seed's
        whose = "" if seed is None else f", seed {seed} (the first of {len(found.scores)} seeds)"
        if png is not None:
            previews.append(figure_html(png, f"The first {SAMPLE_PREVIEW[0] * SAMPLE_PREVIEW[1]} of the scored "
                                        f"images: {found.title}{whose}.",
                                        found.name if seed is None else f"{found.name}, seed {seed}", "preview"))
    if previews:
        body += f'<div class="gallery">{"".join(previews)}</div>'
    return section("scores", "Sample quality", body)


def stages_section(stages: dict[str, Any] | None) -> str:
    if not stages:
        return ""
    records = stages.get("stages", {})
    rows = [[name, record.get("status"), duration(record.get("seconds")), duration(record.get("cpu_seconds")),
             record.get("started"), record.get("finished"), record.get("error") or record.get("note") or ""]
            for name, record in records.items()]
    totals = [sum(record.get(key) or 0.0 for record in records.values()) for key in ("seconds", "cpu_seconds")]
    rows.append([Markup("<b>total</b>"), "", *(duration(total) for total in totals), "", "", ""])
    command = stages.get("command")
    body = (f"<p>Command: <code>{escape(' '.join(command))}</code></p>" if command else "")
    header = ("stage", "status", "time", "CPU time", "started", "finished", "note")
    return section("stages", "Stages and time", body + table(header, rows, "stages"))


def library_versions() -> dict[str, str]:
    """mnistgen's version and each installed one of LIBRARIES (an absent optional one did not build the page)."""
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
    body = table(("", *environments), rows, "kv", by_row=True) if environments else ""
    body += "<h3>Libraries used to build this page</h3>" + value_html(library_versions())
    return section("environment", "Versions and machine", body)
