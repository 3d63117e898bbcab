"""``mnistgen reproduce``: the whole specification, stage by stage, into one folder (:mod:`mnistgen.reproduction`'s
layout), ending with its report; each stage's status and time go to stages.json, which ``--resume`` reads.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from . import scoring
from .config import REPRODUCE_QUICK, GANConfig, ReproduceConfig, ScoreConfig, VAEConfig, VAEEvalConfig, to_dict
from .data.protocols import load_protocol
from .data.sources import FilesUnavailable, load_raw
from .device import resolve_device
from .errors import MnistgenError
from .evaluate import gan as gan_evaluation
from .evaluate import vae as vae_evaluation
from .evaluate.replicas import seed_folders
from .files import read_json, write_json
from .files import to_stderr as say
from .report import write_report
from .reproduction import GAN_OPTIONS, GAN_SAMPLE_SET, IWAE_OPTION, VAE_SAMPLE_SETS, Reproduction, SampleFile
from .runs import SEED_FOLDER_PREFIX, RunDir
from .stats import spread

SCORED_DATASETS = ("mnist", "mnist-sample")  # the score's classifier knows digits only
PROGRESS_FRACTIONS = (0.0, 0.3, 0.7)  # the GAN progress figure: epochs 0, 30, 70 of 100 (SPEC §3's example)


class Stage(NamedTuple):
    name: str
    description: str
    run: Callable[[Reproduction, ReproduceConfig], dict[str, Any] | None]  # may return fields to record


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
        if len(chosen) < len(PROGRESS_FRACTIONS):
            chosen = sorted({*chosen, epoch})
    return chosen


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def prepare(repro: Reproduction, config: ReproduceConfig, resume: bool, explicit: set[str]) -> ReproduceConfig:
    """Check the folder against the request; return the config to run with (the saved one on resume)."""
    if not resume:
        if repro.config.is_file() or repro.stages.is_file():
            raise MnistgenError(f"{repro.path} already holds a reproduction: add --resume to continue it, "
                                "or choose another --out")
        if repro.path.exists() and any(repro.path.iterdir()):
            raise MnistgenError(f"{repro.path} exists and is not empty: choose another --out")
        repro.path.mkdir(parents=True, exist_ok=True)
        repro.write_config(to_dict(config), kind="reproduce")
        return config
    if not repro.config.is_file():
        raise MnistgenError(f"{repro.path}: nothing to resume (no config.json); run without --resume first")
    saved = repro.read_config_as("reproduce", ReproduceConfig, "a reproduction")
    requested, stored = flat_fields(config), flat_fields(saved)
    adds_beyond = "beyond" in explicit and config.beyond and not saved.beyond  # stages added after SPEC's: allowed
    differ = sorted(name for name in explicit if name != "device" and requested[name] != stored[name]
                    and not (name == "beyond" and adds_beyond))
    if differ:
        raise MnistgenError("--resume continues with the saved settings; these flags differ from them: "
                            + ", ".join(f"--{n.replace('_', '-')}" for n in differ))
    if adds_beyond:
        saved = dataclasses.replace(saved, beyond=True)
        repro.write_config(to_dict(saved), kind="reproduce")
    # the device is where to compute, not part of the result: it may change on resume
    return dataclasses.replace(saved, device=config.device) if "device" in explicit else saved


def flat_fields(config: ReproduceConfig) -> dict[str, Any]:
    """The settings by the name of their flag, in the order of the fields (the data's first)."""
    return {**to_dict(config.data), **{k: v for k, v in to_dict(config).items() if k != "data"}}


CLOCKS = {"seconds": time.perf_counter, "cpu_seconds": time.process_time}  # a stage's wall and CPU time (all threads)


def spent(start: dict[str, float]) -> dict[str, float]:
    """Each clock's time since ``start``."""
    return {key: clock() - start[key] for key, clock in CLOCKS.items()}


def reproduce(folder: str | Path, config: ReproduceConfig, resume: bool = False,
              explicit: set[str] | None = None, command: list[str] | None = None) -> Path:
    """Run every stage not yet done, then write the report; returns the report's path."""
    repro = Reproduction(folder)
    config = prepare(repro, config, resume, explicit or set())
    stages = read_json(repro.stages) if repro.stages.is_file() else {"stages": {}}
    stages.setdefault("command", command or ["mnistgen", "reproduce", "--out", str(repro.path)])
    if resume:
        stages.setdefault("resumed", []).append({"at": now(), "command": command})

    def record_stage(name: str, **fields: Any) -> None:
        stages["stages"].setdefault(name, {}).update(fields)
        write_json(repro.stages, stages)

    chosen = STAGES + (BEYOND_STAGES if config.beyond else [])
    for number, stage in enumerate(chosen, start=1):
        record = stages["stages"].get(stage.name, {})
        label = f"[{number}/{len(chosen)}] {stage.name}"
        if record.get("status") == "done":
            say(f"{label}: done before ({record.get('seconds', 0):.1f} s), kept")
            continue
        say(f"{label}: {stage.description}")
        record_stage(stage.name, status="running", started=record.get("started") or now())
        start = {key: clock() - float(record.get(key) or 0.0) for key, clock in CLOCKS.items()}  # time before kept
        try:
            extra = {"status": "done", "note": None, **(stage.run(repro, config) or {})}  # or "skipped", and why
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record_stage(stage.name, status=status, **spent(start), error=f"{type(exc).__name__}: {exc}")
            say(f"{label}: {status}; continue with: mnistgen reproduce --out {repro.path} --resume "
                f"(the report so far: mnistgen report {repro.path})")
            raise
        times = spent(start)
        record_stage(stage.name, **times, finished=now(), error=None, **extra)
        say(f"{label}: {extra['status']} in {times['seconds']:.1f} s (CPU {times['cpu_seconds']:.1f} s)"
            + (f" ({extra['note']})" if extra["note"] else ""))
    return write_report(repro.path)


def vae_config(config: ReproduceConfig, settings: dict[str, Any] | None = None) -> VAEConfig:
    """SPEC §2's defaults (and an option's ``settings``) with the reproduction's data, epochs, replicas and device."""
    spec = VAEConfig(data=config.data, epochs=config.vae_epochs, replicas=config.replicas, device=config.device)
    return dataclasses.replace(spec, **settings) if settings else spec


def gan_config(config: ReproduceConfig, settings: dict[str, Any] | None = None) -> GANConfig:
    """SPEC §3's defaults (and an option's ``settings``) with the reproduction's data, epochs, grid interval, replicas
    and device."""
    spec = GANConfig(data=config.data, epochs=config.gan_epochs, grid_every=config.grid_every,
                     replicas=config.replicas, device=config.device)
    return dataclasses.replace(spec, **settings) if settings else spec


def fresh_or_resumable(run: RunDir) -> bool:
    """True if ``run`` holds a checkpoint to resume from (of a replica run: a committed position, or a seed's). A
    folder with none never completed an epoch: it is cleared, and training starts over."""
    seed_checkpoints = (folder / run.checkpoint.name for folder in run.path.glob(f"{SEED_FOLDER_PREFIX}*"))
    if run.checkpoint.is_file() or run.replicas_commit.is_file() or any(p.is_file() for p in seed_checkpoints):
        return True
    if run.path.exists():
        shutil.rmtree(run.path)
    return False


def train_vae_run(run: RunDir, config: VAEConfig) -> None:
    from .train.vae import train_vae  # looked up when called: tests replace it

    train_vae(config, run, resume=fresh_or_resumable(run))


def train_gan_run(run: RunDir, config: GANConfig) -> None:
    """Train a GAN run on the GAN protocol's training images (SPEC §3: all 60,000 of the dataset)."""
    from .train.gan import train_gan  # looked up when called: tests replace it

    protocol = load_protocol("gan", load_raw(config.data))
    train_gan(config, protocol.train_images, run, resume=fresh_or_resumable(run),
              provenance={**protocol.provenance, "train_images": len(protocol.train_images)})


def evaluate_vae(run: RunDir, config: ReproduceConfig) -> None:
    """Test ELBO and importance-weighted log p(x) of each seed (and of a replica run their spread), said."""
    options = VAEEvalConfig(iw=config.iw_samples, device=config.device)
    if None in seed_folders(run):
        result = vae_evaluation.evaluate_run(run, options)
        say(f"  test ELBO {result['test_elbo']:.2f}, log p(x) >= {result['test_iw_log_likelihood']:.2f} "
            f"(K = {config.iw_samples})")
        return
    summary = vae_evaluation.evaluate_replicas(run, options)["summary"]  # each seed's eval.json, and RUN/eval.json
    elbo, iw = (spread(summary[key]["values"]).text() for key in ("test_elbo", "test_iw_log_likelihood"))
    say(f"  {len(summary['test_elbo']['values'])} seeds, mean ± 95% interval: test ELBO {elbo}, log p(x) >= {iw} "
        f"(K = {config.iw_samples})")


def first_seed_note(run: RunDir) -> str | None:
    """Whose model a replica run's figures show, for the stage's note (None for a single-seed run)."""
    seeds = list(seed_folders(run))
    return None if seeds == [None] else (f"the figures show seed {seeds[0]}, the first of {len(seeds)} seeds; the "
                                         "training curves every seed")


def save_gan_samples(files: list[SampleFile], config: ReproduceConfig, raw: bool = False) -> None:
    """Each seed's samples, from its own G (its moving average where kept; with ``raw`` the trained G), its own seed."""
    for file in files:
        generator, saved = gan_evaluation.load_generator(file.run, resolve_device(config.device), raw=raw)
        scoring.save_images(file.path, gan_evaluation.sample_images(generator, config.score_samples, saved.seed))


def score_sample_files(repro: Reproduction, config: ReproduceConfig, paths: list[Path]) -> dict[str, Any] | None:
    """Score each of ``paths`` that exists into PATH.score.json; or, skipped, a note why the score does not apply."""
    if config.data.dataset not in SCORED_DATASETS:
        return {"status": "skipped", "note": f"the score measures closeness to MNIST digits, not {config.data.dataset}"}
    # the reference is always real MNIST, found where the reproduction's data settings say; on the bundled sample a
    # reproduction touches no network, so there MNIST is used only if it is on disk already
    sample = config.data.dataset == "mnist-sample" and not config.data.offline
    score_config = ScoreConfig(data=dataclasses.replace(config.data, dataset="mnist", offline=config.data.offline
                                                        or sample), device=config.device)
    classifier = scoring.load_classifier(score_config.weights, resolve_device(score_config.device))
    try:
        reference = scoring.reference_statistics(classifier, score_config.data, score_config.batch_size)
    except FilesUnavailable as exc:  # the score command's advice (pass --data-dir) is not the fix of a reproduction
        return {"status": "skipped", "note": "on the bundled sample a reproduction downloads nothing: " * sample
                + str(exc).rpartition("; ")[0]
                + f"; to score: `mnistgen data fetch`, then `mnistgen reproduce --out {repro.path} --resume`"}
    real = reference.balance
    for path in paths:
        if path.is_file():
            score = scoring.score_images(scoring.load_images(path), classifier, reference, score_config)
            scoring.write_report(path, score)
            name = path.stem if path.parent == repro.samples else path.relative_to(repro.path).with_suffix("")
            say(f"  {name}: Frechet distance {score['frechet_distance']:.2f} "
                f"(real vs real {reference.frechet_distance:.2f}), classifier score {score['classifier_score']:.2f}, "
                f"class TV to uniform {score['class_tv_distance']:.3f} ({real['class_tv_distance']:.3f}), "
                f"smallest class {score['min_class_share']:.1%} ({real['min_class_share']:.1%})")
    return None


def stage_vae_plots(repro: Reproduction, config: ReproduceConfig) -> dict[str, Any] | None:
    vae_evaluation.write_figures(repro.vae, VAEEvalConfig(device=config.device))  # a replica run: the first seed's
    note = first_seed_note(repro.vae)
    return {"note": note} if note else None


def stage_vae_samples(repro: Reproduction, config: ReproduceConfig) -> None:
    options = VAEEvalConfig(device=config.device)
    for name, binary in VAE_SAMPLE_SETS.items():
        for file in repro.sample_files(repro.vae, name):  # each seed's own samples, from its own seed
            scoring.save_images(file.path, vae_evaluation.sample_run(file.run, config.score_samples, binary, options))


def stage_gan_plots(repro: Reproduction, config: ReproduceConfig) -> dict[str, Any]:
    first = next(iter(seed_folders(repro.gan).values()))
    epochs = progress_epochs(first.grid_epochs(), config.gan_epochs)  # the first seed's grids
    gan_evaluation.write_figures(repro.gan, epochs)  # a replica run: the first seed's grids, every seed's curves
    note = first_seed_note(repro.gan)
    return {"note": "progress figure of epochs " + ", ".join(map(str, epochs)) + (f"; {note}" if note else "")}


def stage_scores(repro: Reproduction, config: ReproduceConfig) -> dict[str, Any] | None:
    files = [*(file for name in VAE_SAMPLE_SETS for file in repro.sample_files(repro.vae, name)),
             *repro.sample_files(repro.gan, GAN_SAMPLE_SET)]
    return score_sample_files(repro, config, [file.path for file in files])


def stage_explorer(repro: Reproduction, config: ReproduceConfig) -> None:
    from .explore import explorer_from_run, write_explorer

    vae, gan = (next(iter(seed_folders(run).values())) for run in (repro.vae, repro.gan))  # replicas: the first seed's
    if vae.path == repro.vae.path:  # a single-seed run: the reproduction's VAE and GAN panels
        write_explorer(explorer_from_run(repro.path, config.device), repro.explorer)
    else:
        write_explorer(explorer_from_run(vae.path, config.device, gan_folder=gan.path), repro.explorer)


STAGES: list[Stage] = [
    Stage("vae-train", "train the VAE (SPEC §2)", lambda repro, config: train_vae_run(repro.vae, vae_config(config))),
    Stage("vae-eval", "test ELBO and importance-weighted log p(x)",
          lambda repro, config: evaluate_vae(repro.vae, config)),
    Stage("vae-plots", "the VAE's figures", stage_vae_plots),
    Stage("vae-samples", "samples of the VAE for the score", stage_vae_samples),
    Stage("gan-train", "train the GAN (SPEC §3)", lambda repro, config: train_gan_run(repro.gan, gan_config(config))),
    Stage("gan-plots", "the GAN's progress figure and training curves", stage_gan_plots),
    Stage("gan-samples", "samples of the GAN for the score",
          lambda repro, config: save_gan_samples(repro.sample_files(repro.gan, GAN_SAMPLE_SET), config)),
    Stage("scores", "score the samples against MNIST", stage_scores),
    Stage("explorer", "the interactive latent explorer", stage_explorer),
]


def stage_beyond_gan_train(repro: Reproduction, config: ReproduceConfig) -> None:
    for option in GAN_OPTIONS:
        say(f"  {option.folder}: {option.title} ({option.flags})")
        train_gan_run(repro.beyond_run(option), gan_config(config, option.settings))


def beyond_sample_files(repro: Reproduction) -> list[tuple[list[SampleFile], bool]]:
    """(each seed's .npz, drawn from the trained G rather than the average) of each sample set of each GAN option."""
    return [(repro.sample_files(repro.beyond_run(option), name), raw) for option in GAN_OPTIONS
            for name, raw in option.sample_sets().items()]


def stage_beyond_gan_samples(repro: Reproduction, config: ReproduceConfig) -> None:
    for files, raw in beyond_sample_files(repro):
        save_gan_samples(files, config, raw)


def stage_beyond_scores(repro: Reproduction, config: ReproduceConfig) -> dict[str, Any] | None:
    return score_sample_files(repro, config, [file.path for files, _ in beyond_sample_files(repro) for file in files])


BEYOND_STAGES: list[Stage] = [
    Stage("beyond-gan-train", "train the GAN with each option beyond SPEC: "
          + "; ".join(option.flags for option in GAN_OPTIONS), stage_beyond_gan_train),
    Stage("beyond-gan-samples", "samples of each option's GAN for the score", stage_beyond_gan_samples),
    Stage("beyond-scores", "score the options' samples against MNIST", stage_beyond_scores),
    Stage("beyond-vae-train", f"train the VAE on the importance-weighted bound ({IWAE_OPTION.flags})",
          lambda repro, config: train_vae_run(repro.beyond_run(IWAE_OPTION), vae_config(config, IWAE_OPTION.settings))),
    Stage("beyond-vae-eval", "its test ELBO and importance-weighted log p(x)",
          lambda repro, config: evaluate_vae(repro.beyond_run(IWAE_OPTION), config)),
]
