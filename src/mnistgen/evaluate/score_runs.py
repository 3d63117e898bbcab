"""``mnistgen score RUN``: samples drawn from a trained run's model (each seed's of a replica run) and scored.

Each seed's draws are what its ``sample`` command gives with its own seed, saved as RUN[/seed=N]/samples.npz (8-bit
levels, as a reproduction stores its samples); that file is scored, so ``mnistgen score RUN/seed=N/samples.npz`` gives
the same numbers, into samples.score.json beside it. A replica run gets RUN/score.json too (:func:`seeds_summary`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import scoring
from ..config import ScoreConfig, VAEEvalConfig
from ..errors import MnistgenError, UsageError
from ..files import write_json
from ..runs import RunDir
from .replicas import seed_folders, seeds_summary, summary_table

SAMPLES_FILE = "samples.npz"  # in each scored run folder, beside its samples.score.json
SUMMARY_FILE = "score.json"  # a replica run's summary over its seeds
# the numbers of a score report summarized over seeds, with their labels
HEADLINES = {"frechet_distance": "Frechet distance (lower)", "classifier_score": "classifier score (max 10)",
             **scoring.BALANCE_LABELS}


@dataclass(frozen=True)
class ScoredRun:
    """A run folder to score, its kind, and (seed, folder) of each model: (S, RUN/seed=S) per seed, or (None, RUN)."""

    run: RunDir
    kind: str
    targets: list[tuple[int | None, RunDir]]


def samples_path(target: RunDir) -> Path:
    return target.path / SAMPLES_FILE


def run_to_score(path: str | Path) -> ScoredRun:
    """``path`` as a trained VAE or GAN run folder, each model's checkpoint there (checked before any work)."""
    run = RunDir(path).require()
    kind = run.read_config().get("kind")
    if kind == "reproduce":
        raise MnistgenError(f"{run.path}: a reproduction folder; score its runs, {run.path / 'vae'} and "
                            f"{run.path / 'gan'}, or its samples, {run.path / 'samples'}/*.npz")
    if kind not in ("vae", "gan"):
        raise MnistgenError(f"{run.path}: a {kind!r} run folder, not a VAE or GAN run (nor a .npy file of images)")
    targets = list(seed_folders(run).items())
    for _, target in targets:
        if not target.checkpoint.is_file():
            raise MnistgenError(f"{target.checkpoint}: no checkpoint here (train first, or check the run folder)")
    return ScoredRun(run, kind, targets)


def score_run(scored: ScoredRun, classifier: scoring.Classifier, reference: scoring.Reference, config: ScoreConfig,
              say: Callable[[str], None]) -> dict[str, Any]:
    """Draw, save and score ``config.samples`` images of each model of ``scored``, saying each report; of a replica
    run, write and say RUN/score.json too. Returns the report of a single-seed run, or the replica run's summary."""
    reports: dict[int, dict[str, Any]] = {}
    for seed, target in scored.targets:
        path = samples_path(target)
        images, drawn = draw_samples(target, scored.kind, config.samples, config.device)
        scoring.save_images(path, images)
        report = scoring.score_images(scoring.load_images(path), classifier, reference, config)
        written = scoring.write_report(path, report)
        report = {"file": path.name, **report}  # as samples.score.json holds it
        run_seed = seed if seed is not None else target.read_config()["config"].get("seed")
        say(scoring.format_report(report, str(path)))
        say(f"written: {path} ({drawn}, seed {run_seed}) and {written}")
        if seed is None:
            return report
        reports[seed] = report
    aggregate = seeds_summary(reports, tuple(HEADLINES))  # each seed's report, and the spread
    aggregate["worst_seed"] = worst = scoring.worst_seeds(reports)  # of the class balance
    summary = scored.run.path / SUMMARY_FILE
    write_json(summary, aggregate)
    say(f"{scored.run.path}: {config.samples:,} images of each seed's model")
    for line in summary_table(aggregate, HEADLINES, digits=3):
        say(line)
    say("worst seed: " + ", ".join(f"{HEADLINES[k]} {w['value']:.3f} (seed {w['seed']})" for k, w in worst.items()))
    say(f"real vs real ({reference.n_images:,} training images against the test images): Frechet distance "
        f"{reference.frechet_distance:.3f}, classifier score {reference.classifier_score:.3f}")
    say(f"written: {summary}")
    return aggregate


def draw_samples(target: RunDir, kind: str, n: int, device: str) -> tuple[np.ndarray, str]:
    """n images (n, 28, 28) float32 in [0, 1] from one run folder's model, with the run's own seed, and what they are
    in words (a GAN run trained with --ema-decay is sampled from the average of G's weights)."""
    if kind == "vae":
        from .vae import sample_run

        return sample_run(target, n, False, VAEEvalConfig(device=device)), f"{n:,} decoder means p(x|z), z ~ N(0, I)"
    from ..device import resolve_device
    from .gan import generator_label, load_generator, sample_images

    generator, config = load_generator(target, resolve_device(device))
    return sample_images(generator, n, config.seed), f"{n:,} images {generator_label(config)}"


def check_samples(config: ScoreConfig) -> None:
    if config.samples < scoring.MIN_IMAGES:
        raise UsageError(f"--samples {config.samples}: a run's score needs at least {scoring.MIN_IMAGES} images (a "
                         "covariance)")
