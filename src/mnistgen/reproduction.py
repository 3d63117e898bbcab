"""The layout of a reproduction folder: written by :mod:`mnistgen.reproduce`, read by :mod:`mnistgen.report`.

::

    RUN/config.json        kind "reproduce": the ReproduceConfig, mnistgen's version and the environment
    RUN/stages.json        the command, and per stage: status (running|done|skipped|interrupted|failed), seconds
    RUN/vae/               the VAE run folder (mnistgen vae train/eval/plot)
    RUN/gan/               the GAN run folder (mnistgen gan train/plot)
    RUN/samples/NAME.npz   samples of each model (uint8 levels, compressed), NAME.score.json beside (score)
    RUN/explorer.html      the interactive latent explorer (mnistgen explore)
    RUN/report.html        the report (mnistgen report), rebuilt at the end of every reproduce
    RUN/beyond/FOLDER/     with --beyond: the run of each option beyond SPEC (:data:`GAN_OPTIONS`, :data:`IWAE_OPTION`)

A replica run (``--replicas N``) holds one run folder per seed, RUN/vae/seed=S/, each with its samples,
RUN/vae/seed=S/NAME.npz, instead of RUN/samples. Each GAN run of RUN/beyond (each of its seeds) holds ``average.npz``,
the moving average's samples, and where the trained G differs from SPEC's own ``raw.npz``, each with its .score.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import GAN_RECIPES, recipe_text
from .evaluate.replicas import seed_folders
from .runs import RunDir

VAE_SAMPLE_SETS = {"vae_means": False, "vae_binary": True}  # the VAE's sample sets: name -> binary draws
GAN_SAMPLE_SET = "gan"
SAMPLE_SETS = (*VAE_SAMPLE_SETS, GAN_SAMPLE_SET)  # every sample set of SPEC's models, each scored

EMA_DECAY = 0.999  # about 1,000 G steps of memory: 4 epochs of 234 steps
BETAS = "0.5,0.999"  # Adam's B1 of DCGAN (Radford et al., 2016)
LR_D, LR_G = 4e-4, 1e-4  # two time-scale update rule (Heusel et al., 2017): D faster than G
IWAE_TRAIN_SAMPLES = 5  # K of the VAE's importance-weighted bound (about 5x the cost of an Eq. 2 step)
OPTION_SAMPLE_SETS = {"average": False, "raw": True}  # the sample sets of a GAN option: name -> from the trained G


@dataclass(frozen=True)
class Option:
    """A training option beyond SPEC: its run RUN/beyond/FOLDER, what it is, the flags of ``gan train`` (or ``vae
    train``) that give it and the config fields they set."""

    folder: str
    title: str
    flags: str
    settings: dict[str, Any]
    raw_samples: bool = True  # a GAN's: False where the trained G is SPEC's own training (only the average is new)

    def sample_sets(self) -> dict[str, bool]:
        return {name: raw for name, raw in OPTION_SAMPLE_SETS.items() if self.raw_samples or not raw}


RECOMMENDED_GAN_OPTION = Option("gan-improved", "the recommended recipe: " + recipe_text(GAN_RECIPES["improved"]),
                                "--recipe improved", {"recipe": "improved", **GAN_RECIPES["improved"]})
GAN_OPTIONS = (
    Option("gan-ema", "a moving average of G's weights", f"--ema-decay {EMA_DECAY}", {"ema_decay": EMA_DECAY},
           raw_samples=False),
    Option("gan-betas", f"Adam betas {BETAS}", f"--betas {BETAS} --ema-decay {EMA_DECAY}",
           {"betas": BETAS, "ema_decay": EMA_DECAY}),
    Option("gan-ttur", f"two learning rates, D {LR_D:g}, G {LR_G:g}",
           f"--lr-d {LR_D:g} --lr-g {LR_G:g} --ema-decay {EMA_DECAY}",
           {"lr_d": LR_D, "lr_g": LR_G, "ema_decay": EMA_DECAY}),
    RECOMMENDED_GAN_OPTION,
)
IWAE_OPTION = Option("vae-iwae", f"importance-weighted bound, K = {IWAE_TRAIN_SAMPLES}",
                     f"--objective iwae --train-samples {IWAE_TRAIN_SAMPLES}",
                     {"objective": "iwae", "train_samples": IWAE_TRAIN_SAMPLES})


@dataclass(frozen=True)
class SampleFile:
    """The .npz of one sample set of one seed's model (seed None: a single-seed run)."""

    seed: int | None
    run: RunDir  # the single-seed run folder whose model draws the samples
    path: Path


class Reproduction(RunDir):
    """Paths of one reproduction folder: a run folder (its config.json of kind "reproduce") that holds runs."""

    stages = property(lambda self: self.path / "stages.json")
    vae = property(lambda self: RunDir(self.path / "vae"))
    gan = property(lambda self: RunDir(self.path / "gan"))
    samples = property(lambda self: self.path / "samples")
    explorer = property(lambda self: self.path / "explorer.html")
    beyond = property(lambda self: self.path / "beyond")

    def beyond_run(self, option: Option) -> RunDir:
        return RunDir(self.beyond / option.folder)

    def sample_files(self, run: RunDir, name: str) -> list[SampleFile]:
        """NAME.npz of each seed of a model's run: beside each seed's folder of a replica run, and beside a single-seed
        run of RUN/beyond; SPEC's single-seed runs keep theirs in RUN/samples."""
        spec = run.path in (self.vae.path, self.gan.path)
        return [SampleFile(seed, folder, (self.samples if seed is None and spec else folder.path) / f"{name}.npz")
                for seed, folder in seed_folders(run).items()]
