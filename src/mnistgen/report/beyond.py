"""The report's "Beyond the spec" section: the training options of ``mnistgen reproduce --beyond`` beside SPEC's."""

from __future__ import annotations

from typing import Any

from ..evaluate.replicas import seed_folders
from ..reproduction import GAN_OPTIONS, GAN_SAMPLE_SET, IWAE_OPTION, RECOMMENDED_GAN_OPTION, Reproduction, SampleFile
from ..runs import RunDir
from ..scoring import ScoreFile, read_score, score_path
from .html import Markup, escape, figure_html, format_value, interval_name, measured, section, seeds_html, table
from .results import seed_evaluations
from .sections import each_seed_pair, score_cells

SET_TITLES = {"average": "the moving average of G", "raw": "the trained G"}
EVALUATION_KEYS = ("test_elbo", "test_iw_log_likelihood")  # the VAE's numbers compared


def read_scores(files: list[SampleFile]) -> dict[int | None, ScoreFile] | None:
    """Each seed's score of a sample set; None until every seed's score exists."""
    paths = {file.seed: score_path(file.path) for file in files}
    if not paths or not all(path.is_file() for path in paths.values()):
        return None
    return {seed: read_score(path) for seed, path in paths.items()}


def mean_distance(scores: dict[int | None, ScoreFile]) -> float | None:
    values = [score.frechet_distance for score in scores.values()]
    return None if None in values else sum(values) / len(values)


def score_row(scores: dict[int | None, ScoreFile], spec_distance: float | None,
              column: list[dict[int | None, ScoreFile]]) -> list[Any]:
    """[Frechet distance, its ratio to SPEC's, classifier score, (each seed's pair)] of a set scored once or on
    several seeds (:func:`~mnistgen.report.sections.score_cells`), among the sets of ``column``."""
    distance, each = mean_distance(scores), each_seed_pair(scores, column)
    ratio = f"{distance / spec_distance:.2f}" if distance is not None and spec_distance else "—"
    distance_cell, score_cell = score_cells(scores)
    return [distance_cell, ratio, score_cell, *([] if each is None else [each])]


def gan_table(repro: Reproduction) -> str:
    spec = read_scores(repro.sample_files(repro.gan, GAN_SAMPLE_SET))
    found = [] if spec is None else [([Markup("<b>SPEC's defaults</b>"), "(none)", "G"], spec)]
    for option in GAN_OPTIONS:
        for name in option.sample_sets():
            scores = read_scores(repro.sample_files(repro.beyond_run(option), name))
            if scores is not None:
                flags = Markup(f"<code>{escape(option.flags)}</code>")
                found.append(([option.title, flags, SET_TITLES[name]], scores))
    if not found:
        return "<p class='missing'>No GAN option has been scored yet.</p>"
    spec_distance, column = mean_distance(spec) if spec else None, [scores for _, scores in found]
    rows = [[*cells, *score_row(scores, spec_distance, column)] for cells, scores in found]
    headers = ("training", "flags of gan train", "images from", "Frechet distance", "distance / SPEC's",
               "classifier score", "each seed: distance / score")
    return table(headers[: len(rows[0])], rows, "scores")


def vae_table(repro: Reproduction) -> str:
    rows = []
    for title, flags, run in (("SPEC's defaults (Eq. 2)", "", repro.vae),
                              (IWAE_OPTION.title, IWAE_OPTION.flags, repro.beyond_run(IWAE_OPTION))):
        evaluations = seed_evaluations(run) if run.config.is_file() else {}
        if not evaluations or any(result is None for result in evaluations.values()):
            continue
        cells = [measured({seed: result.get(key) for seed, result in evaluations.items()}) for key in EVALUATION_KEYS]
        if None not in evaluations:
            cells.append(seeds_html({seed: Markup(" / ".join(format_value(result.get(key)) for key in EVALUATION_KEYS))
                                     for seed, result in evaluations.items()}))
        rows.append([title, Markup(f"<code>{escape(flags)}</code>") if flags else "(none)", *cells])
    if not rows:
        return "<p class='missing'>No VAE has been evaluated yet.</p>"
    headers = ("objective", "flags of vae train", "test ELBO", "test log p(x), importance-weighted",
               "each seed: ELBO / log p(x)")
    return table(headers[: max(len(row) for row in rows)], rows, "scores")


def last_grid(run: RunDir, raw: bool = False, seed: int | None = None) -> tuple[int, bytes] | None:
    """(epoch, PNG) of the latest saved grid of a run's seed ``seed`` (default: its first; the average's, or with
    ``raw`` G's)."""
    folders = seed_folders(run)
    folder = folders.get(seed) if seed is not None else next(iter(folders.values()))
    epochs = folder.grid_epochs(raw) if folder is not None else []
    if not epochs:
        return None
    png, _ = folder.grid_paths(epochs[-1], raw)
    return (epochs[-1], png.read_bytes()) if png.is_file() else None


def best_and_worst(scores: dict[int | None, ScoreFile] | None) -> list[tuple[str, int, float]]:
    """[("best", seed, distance), ("worst", seed, distance)] by the Frechet distance of a set scored on several
    seeds; [] for one seed or none."""
    distances = {seed: score.frechet_distance for seed, score in (scores or {}).items()
                 if seed is not None and score.frechet_distance is not None}
    if len(distances) < 2:
        return []
    return [(word, seed, distances[seed]) for word, pick in (("best", min), ("worst", max))
            for seed in [pick(distances, key=distances.get)]]


def grids_part(repro: Reproduction) -> str:
    recommended = RECOMMENDED_GAN_OPTION
    improved_run = repro.beyond_run(recommended)
    average = f"{recommended.title} ({recommended.flags}), the moving average of G"
    extremes = best_and_worst(read_scores(repro.sample_files(improved_run, "average")))
    shown = [("SPEC's defaults, G, the first seed", last_grid(repro.gan))]
    shown += [(f"{average}, the {word} seed ({seed}: Frechet distance {distance:.1f})",
               last_grid(improved_run, seed=seed)) for word, seed, distance in extremes] or [
        (f"{average}, the first seed", last_grid(improved_run))]
    shown.append((f"{recommended.title}, the trained G, the first seed", last_grid(improved_run, raw=True)))
    figures = [figure_html(png, f"{title}, epoch {epoch}.", f"last grid: {title}", "grid")
               for title, found in shown if found for epoch, png in [found]]
    if not figures:
        return ""
    return ("<h3>The recommended GAN recipe beside SPEC's, the last grids</h3><p>The same fixed noise batch "
            "(8x8), the last epoch saved; of a recipe trained on several seeds, its best and its worst seed by the "
            "Frechet distance of the moving average's samples, side by side.</p>"
            f'<div class="gallery">{"".join(figures)}</div>')


def beyond_section(repro: Reproduction) -> str:
    """The section, or "" when the folder holds no RUN/beyond (a reproduction without ``--beyond``)."""
    if not repro.beyond.is_dir():
        return ""
    seeds = len(seed_folders(repro.gan))
    spread = (f" Each number measured on several seeds is the mean ± the half-width of its {interval_name(seeds)}, "
              "each seed's value beside it." if seeds > 1 else " One seed each: one sample of the training "
              "randomness (reproduce --replicas N gives the interval).")
    intro = ("<p>Training options beyond the specification, each trained with the same networks, data, epochs and "
             "seeds as SPEC's runs above (which stay exactly SPEC's), and measured the same way: the GAN's samples by "
             "the Frechet distance (lower is better) and classifier score of <i>Sample quality</i>, the VAE by its "
             "test ELBO and importance-weighted log p(x) (higher is better)." + escape(spread) + " Each GAN option's "
             "run keeps a moving average of G's weights beside its training (the average does not change the "
             "training), so it gives both the trained G and the average.</p>")
    body = (intro + "<h3>GAN: training options</h3>" + gan_table(repro) + grids_part(repro)
            + "<h3>VAE: the importance-weighted bound</h3>" + vae_table(repro))
    return section("beyond", "Beyond the spec", body)
