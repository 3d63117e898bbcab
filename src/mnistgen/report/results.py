"""What the report reads from a folder: its runs, each seed's evaluation, the data's provenance and the scores.

A folder is a reproduction (:mod:`mnistgen.reproduction`) or one VAE or GAN run folder (:mod:`mnistgen.runs`), whose
runs may hold seeds as replicas (RUN/seed=S). Nothing here writes; a file that is not what mnistgen writes is one
line naming it (:func:`mnistgen.scoring.read_score` for a score).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MnistgenError
from ..evaluate.replicas import seed_folders
from ..files import read_json
from ..reproduction import Reproduction
from ..runs import RunDir
from ..scoring import ScoreFile, read_score

SCORE_SUFFIX = ".score.json"
SAMPLE_SET_TITLES = {  # the known sample sets, in the order the report shows them
    "vae_means": "VAE, decoder means p(x|z), z ~ N(0, I)",
    "vae_binary": "VAE, binary draws x ~ p(x|z), z ~ N(0, I)",
    "gan": "GAN, G(z), z ~ U[-1, 1]^zdim",
}


def read_json_if_present(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def folder_runs(root: Path, kind: Any) -> dict[str, RunDir]:
    """The run folders a report covers, by model: the reproduction's vae/ and gan/, or the run folder itself."""
    if kind == "reproduce":
        return {"vae": Reproduction(root).vae, "gan": Reproduction(root).gan}
    if kind in ("vae", "gan"):
        return {kind: RunDir(root)}
    raise MnistgenError(f"{root}: a {kind!r} folder; report works on a reproduction, VAE or GAN run folder")


def seed_evaluations(run: RunDir) -> dict[int | None, dict[str, Any] | None]:
    """The eval.json of each seed (RUN/seed=S/eval.json, else its entry in RUN/eval.json's "per_seed"), or of the
    single-seed run (seed None); None where there is none."""
    folders, aggregate = seed_folders(run), read_json_if_present(run.eval)
    if None in folders:
        return {None: aggregate}
    per_seed = aggregate.get("per_seed") if isinstance(aggregate, dict) else None
    per_seed = per_seed if isinstance(per_seed, dict) else {}
    found = {seed: read_json_if_present(folder.eval) or per_seed.get(str(seed)) for seed, folder in folders.items()}
    return {seed: result if isinstance(result, dict) else None for seed, result in found.items()}


def data_file(run: RunDir) -> Path:
    """A run's data.json; a replica run's is its first seed's when RUN has none (every seed reads the same data)."""
    first = next(iter(seed_folders(run).values()))
    return run.data if run.data.is_file() else first.data


def is_bundled_sample(provenance: dict[str, Any]) -> bool:
    """Whether a run's data.json says it used the 5,000-digit sample rather than a full dataset."""
    return provenance.get("dataset") == "mnist-sample" or bool(provenance.get("sample"))


@dataclass(frozen=True)
class ScoredSet:
    """One set of images and its score: one file (seed None), or one per seed of a replica run."""

    title: str
    name: str  # NAME of NAME.score.json
    scores: dict[int | None, ScoreFile]
    folder: Path  # of the first seed's NAME.score.json, and of the images it scored


def scored_sets(root: Path, runs: dict[str, RunDir]) -> list[ScoredSet]:
    """Each scored set of images: a NAME.score.json of the folder (seed None), or one per seed of a replica run,
    RUN/seed=S/NAME.score.json; the known sets in the order of :data:`SAMPLE_SET_TITLES`, then the others."""
    files: list[tuple[str, str, dict[int | None, Path]]] = []  # (title, NAME, {seed: file})
    for folder in (root, root / "samples", root / "vae", root / "gan"):  # a reproduction's, or a run folder's
        for path in sorted(folder.glob("*" + SCORE_SUFFIX)):
            name = path.name.removesuffix(SCORE_SUFFIX)
            files.append((SAMPLE_SET_TITLES.get(name, name), name, {None: path}))
    by_seed: dict[str, tuple[str, dict[int | None, Path]]] = {}
    for model, run in runs.items():
        for seed, folder in seed_folders(run).items():
            for path in sorted(folder.path.glob("*" + SCORE_SUFFIX)) if seed is not None else []:
                name = path.name.removesuffix(SCORE_SUFFIX)
                by_seed.setdefault(SAMPLE_SET_TITLES.get(name, f"{model.upper()}: {name}"), (name, {}))[1][seed] = path
    files += [(title, name, paths) for title, (name, paths) in by_seed.items()]
    order = list(SAMPLE_SET_TITLES)
    files.sort(key=lambda found: order.index(found[1]) if found[1] in order else len(order))
    return [ScoredSet(title, name, {seed: read_score(path) for seed, path in paths.items()},
                      next(iter(paths.values())).parent) for title, name, paths in files]
