"""``mnistgen reproduce``: the whole specification, stage by stage, into one folder, ending with its report.

Layout of a reproduction folder ``RUN/``::

    RUN/config.json        kind "reproduce": the ReproduceConfig, mnistgen's version and the environment
    RUN/stages.json        the command, and per stage: status (running|done|interrupted|failed), seconds
    RUN/vae/               the VAE run folder (mnistgen vae train/eval/plot)
    RUN/gan/               the GAN run folder (mnistgen gan train/plot)
    RUN/samples/NAME.npz   samples of each model (uint8 levels, compressed), NAME.score.json beside (score)
    RUN/explorer.html      the interactive latent explorer (mnistgen explore)
    RUN/report.html        the report (mnistgen report), rebuilt at the end of every reproduce
    RUN/beyond/            with --beyond: the training options beyond SPEC, one run folder each (mnistgen.beyond)

With ``--replicas N`` each model trains N seeds (counting up from its default seed) as one replica run: RUN/vae/ and
RUN/gan/ then hold one ordinary run folder per seed, RUN/vae/seed=S/ (:meth:`mnistgen.runs.RunDir.replicas`). Each
seed is evaluated (RUN/vae/seed=S/eval.json, and RUN/vae/eval.json the mean and 95% interval over the seeds), sampled
and scored: the samples of a seed lie beside its run, RUN/vae/seed=S/NAME.npz and NAME.score.json. The figures and
the explorer show the first seed's models (the training curves every seed's); the report shows every number as the
mean ± its 95% interval over the seeds, each seed's value beside it.

``--beyond`` adds the stages of :data:`BEYOND_STAGES` after SPEC's: the GAN's training options and the VAE's
importance-weighted bound, each trained with the reproduction's epochs and seeds, scored or evaluated as SPEC's runs,
and shown in the report's "Beyond the spec" section. It may be turned on when resuming a finished reproduction.

Stages run in order; each one finished is recorded in stages.json with its time, so ``--resume``
skips it. A training interrupted (Ctrl-C, a crash, a lost machine) continues from its last
checkpoint through the models' own resume support, and its time adds to the time already spent.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import beyond
from .config import (
    REPRODUCE_QUICK,
    GANConfig,
    ReproduceConfig,
    ScoreConfig,
    VAEConfig,
    VAEEvalConfig,
    to_dict,
)
from .errors import MnistgenError
from .files import atomic_write, read_json, write_json
from .imaging import to_uint8
from .runs import SEED_FOLDER_PREFIX, RunDir

SAMPLE_SETS = ("vae_means", "vae_binary", "gan")  # the .npz files in RUN/samples, each scored
MODEL_SAMPLE_SETS = {"vae": SAMPLE_SETS[:2], "gan": SAMPLE_SETS[2:]}  # the sample sets of each model
SCORED_DATASETS = ("mnist", "mnist-sample")  # the score's classifier knows digits only
PROGRESS_FRACTIONS = (0.0, 0.3, 0.7)  # the GAN progress figure: epochs 0, 30, 70 of 100 (SPEC §3's example)


class Reproduction:
    """Paths of one reproduction folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()

    config = property(lambda self: self.path / "config.json")
    stages = property(lambda self: self.path / "stages.json")
    vae = property(lambda self: RunDir(self.path / "vae"))
    gan = property(lambda self: RunDir(self.path / "gan"))
    samples = property(lambda self: self.path / "samples")
    explorer = property(lambda self: self.path / "explorer.html")
    report = property(lambda self: self.path / "report.html")

    def sample_file(self, name: str) -> Path:
        return self.samples / f"{name}.npz"

    def model_samples(self, model: str) -> list[tuple[RunDir, dict[str, Path]]]:
        """Each single-seed run of ``model`` ("vae" or "gan") with the .npz of each of its sample sets: the run and
        RUN/samples/NAME.npz, or for a replica run each RUN/MODEL/seed=S and its own RUN/MODEL/seed=S/NAME.npz."""
        names, run = MODEL_SAMPLE_SETS[model], getattr(self, model)
        runs = model_runs(run)
        if runs[0] is run:  # a single-seed run
            return [(run, {name: self.sample_file(name) for name in names})]
        return [(seed_run, {name: seed_run.path / f"{name}.npz" for name in names}) for seed_run in runs]


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[Reproduction, ReproduceConfig], dict[str, Any] | None]  # may return fields to record


# --------------------------------------------------------------------------- configuration


def config_field_names(cls: type) -> list[str]:
    """Flag destinations of a config class, nested config fields (``data``) included."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        names += config_field_names(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else [f.name]
    return names


def quick_config() -> ReproduceConfig:
    """The ``--quick`` settings: the defaults with :data:`REPRODUCE_QUICK` applied."""
    return dataclasses.replace(ReproduceConfig(), **REPRODUCE_QUICK)


def progress_epochs(saved: list[int], epochs: int) -> list[int]:
    """Three epochs of the saved grids for the progress figure: 0, ~30% and ~70% of training (SPEC §3's example
    0, 30, 70 of 100), each the latest saved grid at or before its target; all of them if fewer than three."""
    saved = sorted(set(saved))
    if len(saved) <= len(PROGRESS_FRACTIONS):
        return saved
    chosen = sorted({max([e for e in saved if e <= fraction * epochs] or saved[:1]) for fraction in PROGRESS_FRACTIONS})
    for epoch in reversed(saved):  # fewer than three distinct: fill with the latest others
        if len(chosen) == len(PROGRESS_FRACTIONS):
            break
        if epoch not in chosen:
            chosen = sorted({*chosen, epoch})
    return chosen


# --------------------------------------------------------------------------- stages.json


def read_stages(repro: Reproduction) -> dict[str, Any]:
    return read_json(repro.stages) if repro.stages.is_file() else {"stages": {}}


def record_stage(repro: Reproduction, stages: dict[str, Any], name: str, **fields: Any) -> None:
    stages["stages"].setdefault(name, {}).update(fields)
    write_json(repro.stages, stages)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the pipeline


def prepare(repro: Reproduction, config: ReproduceConfig, resume: bool, explicit: set[str]) -> ReproduceConfig:
    """Check the folder against the request; return the config to run with (the saved one on resume)."""
    if not resume:
        if repro.config.is_file() or repro.stages.is_file():
            raise MnistgenError(f"{repro.path} already holds a reproduction: add --resume to continue it, "
                                "or choose another --out")
        if repro.path.exists() and any(repro.path.iterdir()):
            raise MnistgenError(f"{repro.path} exists and is not empty: choose another --out")
        repro.path.mkdir(parents=True, exist_ok=True)
        RunDir(repro.path).write_config(to_dict(config), kind="reproduce")
        return config
    if not repro.config.is_file():
        raise MnistgenError(f"{repro.path}: nothing to resume (no config.json); run without --resume first")
    saved = RunDir(repro.path).read_config_as("reproduce", ReproduceConfig, "a reproduction")
    requested, stored = flat_fields(config), flat_fields(saved)
    adds_beyond = "beyond" in explicit and config.beyond and not saved.beyond  # stages added after SPEC's: allowed
    differ = sorted(name for name in explicit if name != "device" and requested[name] != stored[name]
                    and not (name == "beyond" and adds_beyond))
    if differ:
        raise MnistgenError("--resume continues with the saved settings; these flags differ from them: "
                            + ", ".join(f"--{n.replace('_', '-')}" for n in differ))
    if adds_beyond:
        saved = dataclasses.replace(saved, beyond=True)
        RunDir(repro.path).write_config(to_dict(saved), kind="reproduce")
    # the device is where to compute, not part of the result: it may change on resume
    return dataclasses.replace(saved, device=config.device) if "device" in explicit else saved


def flat_fields(config: ReproduceConfig) -> dict[str, Any]:
    values = {k: v for k, v in to_dict(config).items() if k != "data"}
    return {**values, **to_dict(config.data)}


def reproduce(folder: str | Path, config: ReproduceConfig, resume: bool = False,
              explicit: set[str] | None = None, command: list[str] | None = None) -> Path:
    """Run every stage not yet done, then write the report; returns the report's path."""
    from .report import write_report

    repro = Reproduction(folder)
    config = prepare(repro, config, resume, explicit or set())
    stages = read_stages(repro)
    stages.setdefault("command", command or ["mnistgen", "reproduce", "--out", str(repro.path)])
    if resume:
        stages.setdefault("resumed", []).append({"at": now(), "command": command})
    chosen = stages_of(config)
    for number, stage in enumerate(chosen, start=1):
        record = stages["stages"].get(stage.name, {})
        label = f"[{number}/{len(chosen)}] {stage.name}"
        if record.get("status") == "done":
            say(f"{label}: done before ({record.get('seconds', 0):.1f} s), skipped")
            continue
        say(f"{label}: {stage.description}")
        spent_before = float(record.get("seconds") or 0.0)
        record_stage(repro, stages, stage.name, status="running", started=record.get("started") or now())
        start = time.perf_counter()
        try:
            extra = stage.run(repro, config) or {}
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record_stage(repro, stages, stage.name, status=status, seconds=spent_before + time.perf_counter() - start,
                         error=f"{type(exc).__name__}: {exc}")
            say(f"{label}: {status}; continue with: mnistgen reproduce --out {repro.path} --resume "
                f"(the report so far: mnistgen report {repro.path})")
            raise
        seconds = spent_before + time.perf_counter() - start
        record_stage(repro, stages, stage.name, status="done", seconds=seconds, finished=now(), error=None, **extra)
        say(f"{label}: done in {seconds:.1f} s" + (f" ({extra['note']})" if "note" in extra else ""))
    return write_report(repro.path)


# --------------------------------------------------------------------------- the stages


def vae_config(config: ReproduceConfig) -> VAEConfig:
    """SPEC §2's defaults, with the reproduction's data, epochs, replicas and device."""
    return VAEConfig(data=config.data, epochs=config.vae_epochs, replicas=config.replicas, device=config.device)


model_runs = beyond.single_runs  # the single-seed run folders of a trained model (one definition, in beyond)


def fresh_or_resumable(run: RunDir) -> bool:
    """True if ``run`` holds a checkpoint to resume from (a replica run: a committed position, or a seed's
    checkpoint). A folder with none never completed an epoch (it was interrupted while loading data or in its
    first epoch): it is cleared, and training starts over."""
    seed_checkpoints = (folder / run.checkpoint.name for folder in run.path.glob(f"{SEED_FOLDER_PREFIX}*"))
    if run.checkpoint.is_file() or run.replicas_commit.is_file() or any(p.is_file() for p in seed_checkpoints):
        return True
    if run.path.exists():
        shutil.rmtree(run.path)
    return False


def stage_vae_train(repro: Reproduction, config: ReproduceConfig) -> None:
    from .train.vae import train_vae

    run = repro.vae
    train_vae(vae_config(config), run, resume=fresh_or_resumable(run))


def stage_vae_eval(repro: Reproduction, config: ReproduceConfig) -> None:
    from .evaluate.vae import evaluate_replicas, evaluate_run
    from .stats import spread

    options = VAEEvalConfig(iw=config.iw_samples, device=config.device)
    if not repro.vae.replicas():
        result = evaluate_run(repro.vae, options)
        say(f"  test ELBO {result['test_elbo']:.2f}, log p(x) >= {result['test_iw_log_likelihood']:.2f} "
            f"(K = {config.iw_samples})")
        return
    summary = evaluate_replicas(repro.vae, options)["summary"]  # each seed's eval.json, and RUN/vae/eval.json
    elbo, iw = (spread(summary[key]["values"]).text() for key in ("test_elbo", "test_iw_log_likelihood"))
    say(f"  {len(summary['test_elbo']['values'])} seeds, mean ± 95% interval: test ELBO {elbo}, log p(x) >= {iw} "
        f"(K = {config.iw_samples})")


def stage_vae_plots(repro: Reproduction, config: ReproduceConfig) -> dict[str, Any] | None:
    from .evaluate.vae import write_figures

    write_figures(repro.vae, VAEEvalConfig(device=config.device))  # a replica run: the first seed's model
    note = first_seed_note(repro.vae)
    return {"note": note} if note else None


def first_seed_note(run: RunDir) -> str | None:
    """Whose model a replica run's figures show, for the stage's note (None for a single-seed run)."""
    replicas = run.replicas()
    return (f"the figures show seed {replicas[0][0]}, the first of {len(replicas)} seeds; the training curves every "
            "seed" if replicas else None)


def save_images(path: Path, images: np.ndarray) -> None:
    """(N, 28, 28) samples in [0, 1], stored as 8-bit levels (as MNIST's own pixels; `score` reads them as
    level / 255) in a compressed .npz of one array: 0.5-3.5 MB for 10,000 samples instead of 31 MB as float32."""
    levels = to_uint8(images)
    atomic_write(path, lambda handle: np.savez_compressed(handle, images=levels))


def stage_vae_samples(repro: Reproduction, config: ReproduceConfig) -> None:
    from .evaluate.vae import sample_run

    options = VAEEvalConfig(device=config.device)
    for run, files in repro.model_samples("vae"):  # each seed's own samples, from its own seed
        save_images(files["vae_means"], sample_run(run, config.score_samples, False, options))
        save_images(files["vae_binary"], sample_run(run, config.score_samples, True, options))


def gan_config(config: ReproduceConfig) -> GANConfig:
    """SPEC §3's defaults, with the reproduction's data, epochs, grid interval, replicas and device."""
    return GANConfig(data=config.data, epochs=config.gan_epochs, grid_every=config.grid_every,
                     replicas=config.replicas, device=config.device)


def stage_gan_train(repro: Reproduction, config: ReproduceConfig) -> None:
    from .data.protocols import load_protocol
    from .data.sources import load_raw
    from .train.gan import train_gan

    protocol = load_protocol("gan", load_raw(config.data))
    provenance = {**protocol.provenance, "train_images": len(protocol.train_images)}
    run = repro.gan
    train_gan(gan_config(config), protocol.train_images, run, resume=fresh_or_resumable(run), provenance=provenance)


def stage_gan_plots(repro: Reproduction, config: ReproduceConfig) -> dict[str, Any]:
    from .evaluate.gan import write_figures

    epochs = progress_epochs(model_runs(repro.gan)[0].grid_epochs(), config.gan_epochs)  # the first seed's grids
    write_figures(repro.gan, epochs)  # a replica run: the first seed's grids, every seed's curves
    note = first_seed_note(repro.gan)
    return {"note": "progress figure of epochs " + ", ".join(map(str, epochs)) + (f"; {note}" if note else "")}


def stage_gan_samples(repro: Reproduction, config: ReproduceConfig) -> None:
    from .device import resolve_device
    from .evaluate.gan import load_generator, sample_images

    for run, files in repro.model_samples("gan"):  # each seed's own samples, from its own seed
        generator, saved = load_generator(run, resolve_device(config.device))
        save_images(files["gan"], sample_images(generator, config.score_samples, saved.seed))


def stage_scores(repro: Reproduction, config: ReproduceConfig) -> dict[str, Any] | None:
    """Score every sample set against MNIST's test images, beside the real-vs-real reference."""
    paths = [path for model in MODEL_SAMPLE_SETS for _, files in repro.model_samples(model) for path in files.values()]
    return score_sample_files(repro, config, paths)


def score_sample_files(repro: Reproduction, config: ReproduceConfig, paths: list[Path]) -> dict[str, Any] | None:
    """Score each of ``paths`` (the .npz of a sample set; those missing are left out) against MNIST's test images,
    beside the real-vs-real reference, into PATH.score.json; or a note why the score does not apply."""
    from .data.sources import load_raw
    from .device import resolve_device
    from .scoring import compute_reference, load_classifier, load_images, score_images, write_report

    if config.data.dataset not in SCORED_DATASETS:
        return {"note": f"skipped: the score measures closeness to MNIST digits, not to {config.data.dataset}"}
    # the reference is always real MNIST, found where the reproduction's data settings say
    score_config = ScoreConfig(data=dataclasses.replace(config.data, dataset="mnist"), device=config.device)
    real = load_raw(score_config.data)
    if real.provenance.get("sample"):
        # Offline with no MNIST files the rest of the pipeline runs on the bundled sample; the score's
        # real-vs-real reference cannot (it needs 10k training and 10k test images), so it is left out.
        return {"note": "skipped: the score's real-vs-real reference needs full MNIST, and only the bundled "
                        "5,000-digit sample could be loaded (run `mnistgen data fetch`, or pass --data-dir)"}
    classifier = load_classifier(score_config.weights, resolve_device(score_config.device))
    reference = compute_reference(classifier, real, score_config.batch_size)
    for path in paths:
        if path.is_file():
            report = score_images(load_images(path), classifier, reference, score_config)
            write_report(path, report)
            name = path.stem if path.parent == repro.samples else path.relative_to(repro.path).with_suffix("")
            say(f"  {name}: Frechet distance {report['frechet_distance']:.2f} "
                f"(real vs real {reference.frechet_distance:.2f}), classifier score {report['classifier_score']:.2f}")
    return None


def stage_explorer(repro: Reproduction, config: ReproduceConfig) -> None:
    from .explore import explorer_from_run, write_explorer

    vae, gan = repro.vae, repro.gan
    if model_runs(vae)[0] is vae:  # a single-seed run
        write_explorer(explorer_from_run(repro.path, config.device), repro.explorer)  # VAE and GAN panels
    else:  # replicas: the first seed's models
        first_vae, first_gan = model_runs(vae)[0], model_runs(gan)[0]
        write_explorer(explorer_from_run(first_vae.path, config.device, gan_folder=first_gan.path), repro.explorer)


STAGES: list[Stage] = [
    Stage("vae-train", "train the VAE (SPEC §2)", stage_vae_train),
    Stage("vae-eval", "test ELBO and importance-weighted log p(x)", stage_vae_eval),
    Stage("vae-plots", "the VAE's figures", stage_vae_plots),
    Stage("vae-samples", "samples of the VAE for the score", stage_vae_samples),
    Stage("gan-train", "train the GAN (SPEC §3)", stage_gan_train),
    Stage("gan-plots", "the GAN's progress figure and training curves", stage_gan_plots),
    Stage("gan-samples", "samples of the GAN for the score", stage_gan_samples),
    Stage("scores", "score the samples against MNIST", stage_scores),
    Stage("explorer", "the interactive latent explorer", stage_explorer),
]
BEYOND_STAGES: list[Stage] = [
    Stage("beyond-gan-train", "train the GAN with each option beyond SPEC: "
          + "; ".join(option.flags for option in beyond.GAN_OPTIONS), beyond.stage_gan_train),
    Stage("beyond-gan-samples", "samples of each option's GAN for the score", beyond.stage_gan_samples),
    Stage("beyond-scores", "score the options' samples against MNIST", beyond.stage_scores),
    Stage("beyond-vae-train", f"train the VAE on the importance-weighted bound ({beyond.VAE_FLAGS})",
          beyond.stage_vae_train),
    Stage("beyond-vae-eval", "its test ELBO and importance-weighted log p(x)", beyond.stage_vae_eval),
]


def stages_of(config: ReproduceConfig) -> list[Stage]:
    """The stages a reproduction runs: SPEC's, then with ``beyond`` the options beyond it."""
    return STAGES + (BEYOND_STAGES if config.beyond else [])
