"""A replica run's results: each seed's headline numbers beside their mean, standard deviation and 95% interval.

A replica run RUN (``--replicas N`` or ``--seeds A,B,C``) holds one ordinary single-seed run folder per seed,
RUN/seed=N (:meth:`mnistgen.runs.RunDir.replicas`). A result is computed for each seed as for any run, written into
RUN/seed=N, and summarized in RUN by :func:`seeds_summary`, a JSON object that other code reads (keep its keys)::

    {"seeds": [1234, 1235, 1236],
     "per_seed": {"1234": <that seed's result>, ...},
     "summary": {"<headline>": Spread.as_dict(), ...},     # n, values, mean, std, ci95_low/high/half_width
     "interval": "95% Student-t interval of the mean"}

Commands that use one model (sample, most figures, :func:`mnistgen.load_run`) use the first seed: :func:`first_seed`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MnistgenError
from ..runs import RunDir
from ..stats import INTERVAL_NAME, spread

MISSING = "n/a"  # the std and interval of a single seed


def seeds_summary(per_seed: Mapping[int, dict[str, Any]], headlines: Sequence[str]) -> dict[str, Any]:
    """The aggregate of one result over seeds (see the module's docstring); ``per_seed`` in the seeds' order."""
    seeds = list(per_seed)
    return {
        "seeds": seeds,
        "per_seed": {str(seed): result for seed, result in per_seed.items()},
        "summary": {key: spread([float(per_seed[seed][key]) for seed in seeds]).as_dict() for key in headlines},
        "interval": INTERVAL_NAME,
    }


def summary_table(aggregate: dict[str, Any], labels: Mapping[str, str], digits: int = 2) -> list[str]:
    """The lines of a table of :func:`seeds_summary`'s result: a header naming the interval, then one line per
    headline number in ``labels`` (key -> label): mean ± half-width of the 95% interval, std, each seed's value."""
    seeds = aggregate["seeds"]
    label_width = max(len(label) for label in labels.values()) + 2
    seed_width = max(11, max(len(f"seed={seed}") for seed in seeds) + 2)
    lines = [f"{len(seeds)} seeds: mean ± half-width of the {INTERVAL_NAME}, std over seeds (n - 1), "
             "and each seed's value",
             f"{'':{label_width}}{'mean ± 95% interval':>22}{'std':>9}"
             + "".join(f"{f'seed={seed}':>{seed_width}}" for seed in seeds)]
    for key, label in labels.items():
        found = spread(aggregate["summary"][key]["values"])  # the summary's numbers, as Spread.text writes them
        std = MISSING if found.std is None else f"{found.std:.{digits}f}"
        lines.append(f"{label:{label_width}}{found.text(digits):>22}{std:>9}"
                     + "".join(f"{value:>{seed_width}.{digits}f}" for value in found.values))
    return lines


def seed_folders(run: RunDir) -> dict[int | None, RunDir]:
    """{seed: RUN/seed=S} of a replica run, in its seeds' order; {None: RUN} of a single-seed run (or of a folder
    with no config.json yet)."""
    return (dict(run.replicas()) if run.config.is_file() else {}) or {None: run}


def first_seed(run: RunDir, what: str, say: Callable[[str], None], kind: str | None = None,
               another: str | None = None) -> RunDir:
    """The folder a one-model command uses: ``run`` itself, or for a replica run its first seed's, RUN/seed=N, with one
    note to ``say`` naming it (``what``: "sampling", "loading"; ``another``: how to choose another seed, by default
    naming its folder). ``kind``, where given, is checked first (a one-line error for a run of another kind)."""
    if kind is not None:
        found = run.read_config().get("kind")
        if found != kind:
            raise MnistgenError(f"{run.path}: a {found!r} run folder, not a {kind.upper()} run")
    replicas = run.replicas()
    if not replicas:
        return run
    first = replicas[0][1]
    another = another or f"name {run.path / 'seed=N'} for another"
    seeds = f"{len(replicas)} seed{'s' if len(replicas) != 1 else ''} ({', '.join(str(s) for s, _ in replicas)})"
    say(f"mnistgen: note: {run.path} holds {seeds}; {what} the first, {first.path} ({another})")
    return first


def figure_lines(paths: Sequence[Path], replicas: Sequence[tuple[int, RunDir]], every_seed: str) -> list[str]:
    """"wrote PATH" per figure; for a replica run, each line says whose model it shows: the first seed's, or every
    seed's for the figure named ``every_seed`` (the training curves)."""
    if not replicas:
        return [f"wrote {path}" for path in paths]
    first, _ = replicas[0]
    every = ", ".join(str(seed) for seed, _ in replicas)
    return [f"wrote {path} (every seed: {every})" if path.stem == every_seed
            else f"wrote {path} (seed {first}, the first of {len(replicas)} seeds)" for path in paths]
