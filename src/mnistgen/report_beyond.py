"""The report's "Beyond the spec" section: the options of :mod:`mnistgen.beyond` beside SPEC's defaults.

SPEC's numbers come first in each table, then each option's, every number measured on several seeds as the mean ±
its 95% Student-t interval with each seed's value beside it; then the last grid of SPEC's GAN beside the recommended
recipe's (the first seed's). Read only from the folder, as the rest of the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .beyond import GAN_OPTIONS, IWAE_TRAIN_SAMPLES, VAE_FLAGS, Beyond, GANOption
from .report import (
    Markup,
    escape,
    figure_html,
    format_value,
    interval_name,
    read_score,
    section,
    seed_evaluations,
    seed_folders,
    seeds_html,
    spread_html,
    table,
)
from .runs import RunDir

SET_TITLES = {"average": "the moving average of G", "raw": "the trained G"}


def seed_files(run: RunDir, name: str, spec_folder: Path | None = None) -> dict[int | None, Path]:
    """{seed: NAME.score.json} of each seed folder of ``run`` ({None: ...} for a single-seed run, whose file lies in
    ``spec_folder`` when given: SPEC's own GAN keeps its samples in RUN/samples)."""
    folders = seed_folders(run)
    if list(folders) == [None] and spec_folder is not None:
        return {None: spec_folder / f"{name}.score.json"}
    return {seed: folder.path / f"{name}.score.json" for seed, folder in folders.items()}


SCORE_KEYS = ("frechet_distance", "classifier_score")


def read_scores(files: dict[int | None, Path]) -> dict[int | None, dict[str, Any]] | None:
    """Each seed's score of a sample set; None until every seed's score exists."""
    if not files or not all(path.is_file() for path in files.values()):
        return None
    return {seed: read_score(path) for seed, path in files.items()}


def mean_distance(scores: dict[int | None, dict[str, Any]]) -> float | None:
    values = [s.get("frechet_distance") for s in scores.values()]
    return sum(values) / len(values) if all(isinstance(v, int | float) for v in values) else None


def score_cells(scores: dict[int | None, dict[str, Any]], spec_distance: float | None) -> list[Any]:
    """[Frechet distance, its ratio to SPEC's, classifier score, (each seed's pair)] of a set scored on one seed
    (the values) or several (mean ± interval, and each seed's)."""
    distance = mean_distance(scores)
    ratio = f"{distance / spec_distance:.2f}" if distance is not None and spec_distance else "—"
    if list(scores) == [None]:
        score = scores[None]
        return [score.get(SCORE_KEYS[0]), ratio, score.get(SCORE_KEYS[1])]
    pairs = {seed: Markup(f"{format_value(s.get(SCORE_KEYS[0]))} / {format_value(s.get(SCORE_KEYS[1]))}")
             for seed, s in scores.items()}
    distance_cell, score_cell = (spread_html([s.get(key) for s in scores.values()], len(scores)) for key in SCORE_KEYS)
    return [distance_cell, ratio, score_cell, seeds_html(pairs)]


def gan_table(root: Path, beyond: Beyond) -> str:
    rows = []
    spec = read_scores(seed_files(RunDir(root / "gan"), "gan", root / "samples"))
    spec_distance = mean_distance(spec) if spec else None
    if spec is not None:
        rows.append([Markup("<b>SPEC's defaults</b>"), "(none)", "G", *score_cells(spec, spec_distance)])
    several = False
    for option in GAN_OPTIONS:
        for name in option.sample_sets():
            scores = read_scores(seed_files(beyond.gan(option), name))
            if scores is not None:
                several = several or list(scores) != [None]
                rows.append([option.title, Markup(f"<code>{escape(option.flags)}</code>"), SET_TITLES[name],
                             *score_cells(scores, spec_distance)])
    if not rows:
        return "<p class='missing'>No GAN option has been scored yet.</p>"
    headers = ("training", "flags of gan train", "images from", "Frechet distance", "distance / SPEC's",
               "classifier score", "each seed: distance / score")
    return table(headers[: len(rows[0])], rows, "scores")


def vae_table(root: Path, beyond: Beyond) -> str:
    keys = ("test_elbo", "test_iw_log_likelihood")
    rows = []
    for title, flags, run in (("SPEC's defaults (Eq. 2)", "", RunDir(root / "vae")),
                              (f"importance-weighted bound, K = {IWAE_TRAIN_SAMPLES}", VAE_FLAGS, beyond.vae)):
        evaluations = seed_evaluations(run) if run.config.is_file() else {}
        if not evaluations or any(result is None for result in evaluations.values()):
            continue
        if list(evaluations) == [None]:
            cells = [evaluations[None].get(key) for key in keys]
        else:
            cells = [spread_html([result.get(key) for result in evaluations.values()], len(evaluations))
                     for key in keys]
            cells.append(seeds_html({seed: Markup(" / ".join(format_value(result.get(key)) for key in keys))
                                     for seed, result in evaluations.items()}))
        rows.append([title, Markup(f"<code>{escape(flags)}</code>") if flags else "(none)", *cells])
    if not rows:
        return "<p class='missing'>No VAE has been evaluated yet.</p>"
    headers = ("objective", "flags of vae train", "test ELBO", "test log p(x), importance-weighted",
               "each seed: ELBO / log p(x)")
    return table(headers[: max(len(row) for row in rows)], rows, "scores")


def last_grid(run: RunDir, raw: bool = False) -> tuple[int, bytes] | None:
    """(epoch, PNG) of the latest saved grid of a run's first seed (its average's, or with ``raw`` G's)."""
    first = next(iter(seed_folders(run).values()))
    epochs = first.grid_epochs(raw) if first.path.is_dir() else []
    if not epochs:
        return None
    png, _ = first.grid_paths(epochs[-1], raw)
    return (epochs[-1], png.read_bytes()) if png.is_file() else None


def grids_part(root: Path, beyond: Beyond, recommended: GANOption) -> str:
    spec_run, improved_run = RunDir(root / "gan"), beyond.gan(recommended)
    shown = [("SPEC's defaults, G", last_grid(spec_run)),
             (f"{recommended.title} ({recommended.flags}), the moving average of G", last_grid(improved_run)),
             (f"{recommended.title}, the trained G", last_grid(improved_run, raw=True))]
    figures = [figure_html(png, f"{title}, epoch {epoch}: the fixed noise batch of the first seed.",
                           f"last grid: {title}", "grid") for title, found in shown if found for epoch, png in [found]]
    if not figures:
        return ""
    return ("<h3>The recommended GAN recipe beside SPEC's, the last grids</h3><p>The same fixed noise batch "
            "(8x8), the last epoch saved, the first seed of each.</p>"
            f'<div class="gallery">{"".join(figures)}</div>')


def beyond_section(root: Path) -> str:
    """The section, or "" when the folder holds no RUN/beyond (a reproduction without ``--beyond``)."""
    beyond = Beyond(root)
    if not beyond.exists():
        return ""
    seeds = len(seed_folders(RunDir(root / "gan")))
    spread = (f" Each number measured on several seeds is the mean ± the half-width of its {interval_name(seeds)}, "
              "each seed's value beside it." if seeds > 1 else " One seed each: one sample of the training "
              "randomness (reproduce --replicas N gives the interval).")
    intro = ("<p>Training options beyond the specification, each trained with the same networks, data, epochs and "
             "seeds as SPEC's runs above (which stay exactly SPEC's), and measured the same way: the GAN's samples by "
             "the Frechet distance (lower is better) and classifier score of <i>Sample quality</i>, the VAE by its "
             "test ELBO and importance-weighted log p(x) (higher is better)." + escape(spread) + " Each GAN option's "
             "run keeps a moving average of G's weights beside its training (the average does not change the "
             "training), so it gives both the trained G and the average.</p>")
    recommended = next(option for option in GAN_OPTIONS if option.settings.get("recipe") == "improved")
    body = (intro + "<h3>GAN: training options</h3>" + gan_table(root, beyond) + grids_part(root, beyond, recommended)
            + "<h3>VAE: the importance-weighted bound</h3>" + vae_table(root, beyond))
    return section("beyond", "Beyond the spec", body)
