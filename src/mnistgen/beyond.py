"""``mnistgen reproduce --beyond``: the training options beyond SPEC, trained beside SPEC's defaults.

SPEC's own runs (RUN/vae, RUN/gan) stay exactly as without ``--beyond``; these stages come after them and add one
run folder per option, with the reproduction's data, epochs, seeds (``--replicas``) and device::

    RUN/beyond/gan-ema/        SPEC's GAN training, keeping a moving average of G (--ema-decay 0.999)
    RUN/beyond/gan-betas/      --betas 0.5,0.999 (with the average kept beside: the run gives both)
    RUN/beyond/gan-ttur/       --lr-d 4e-4 --lr-g 1e-4 (with the average)
    RUN/beyond/gan-improved/   --recipe improved
    RUN/beyond/vae-iwae/       the VAE on the importance-weighted bound, --objective iwae --train-samples 5

Each GAN run (each seed's folder of a replica run) holds ``average.npz`` (the moving average's samples) and, where
the trained G differs from SPEC's own, ``raw.npz``; each with its ``.score.json``. The VAE run holds its eval.json.
The report's "Beyond the spec" section (:mod:`mnistgen.report_beyond`) puts them beside SPEC's numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import GAN_RECIPES, GANConfig, ReproduceConfig, VAEConfig, VAEEvalConfig, recipe_text
from .runs import RunDir

EMA_DECAY = 0.999  # about 1,000 G steps of memory: 4 epochs of 234 steps
BETAS = "0.5,0.999"  # Adam's B1 of DCGAN (Radford et al., 2016)
LR_D, LR_G = 4e-4, 1e-4  # two time-scale update rule (Heusel et al., 2017): D faster than G
IWAE_TRAIN_SAMPLES = 5  # K of the VAE's importance-weighted bound (about 5x the cost of an Eq. 2 step)
SAMPLE_SETS = {"average": False, "raw": True}  # the sample files of a GAN option: name -> from the trained G (raw)


@dataclass(frozen=True)
class GANOption:
    """One GAN training option: its folder RUN/beyond/FOLDER, what it is, the flags of ``mnistgen gan train`` that
    give it, and the :class:`GANConfig` fields they set."""

    folder: str
    title: str
    flags: str
    settings: dict[str, Any]
    raw_samples: bool = True  # False where the trained G is SPEC's own training (only the average is new)

    def sample_sets(self) -> list[str]:
        return [name for name, raw in SAMPLE_SETS.items() if self.raw_samples or not raw]


GAN_OPTIONS = (
    GANOption("gan-ema", "a moving average of G's weights", f"--ema-decay {EMA_DECAY}", {"ema_decay": EMA_DECAY},
              raw_samples=False),
    GANOption("gan-betas", f"Adam betas {BETAS}", f"--betas {BETAS} --ema-decay {EMA_DECAY}",
              {"betas": BETAS, "ema_decay": EMA_DECAY}),
    GANOption("gan-ttur", f"two learning rates, D {LR_D:g}, G {LR_G:g}",
              f"--lr-d {LR_D:g} --lr-g {LR_G:g} --ema-decay {EMA_DECAY}",
              {"lr_d": LR_D, "lr_g": LR_G, "ema_decay": EMA_DECAY}),
    GANOption("gan-improved", "the recommended recipe: " + recipe_text(GAN_RECIPES["improved"]), "--recipe improved",
              {"recipe": "improved", **GAN_RECIPES["improved"]}),
)
VAE_FOLDER = "vae-iwae"
VAE_FLAGS = f"--objective iwae --train-samples {IWAE_TRAIN_SAMPLES}"


class Beyond:
    """Paths of RUN/beyond in a reproduction folder."""

    def __init__(self, reproduction: str | Path):
        self.path = Path(reproduction) / "beyond"

    def gan(self, option: GANOption) -> RunDir:
        return RunDir(self.path / option.folder)

    @property
    def vae(self) -> RunDir:
        return RunDir(self.path / VAE_FOLDER)

    def exists(self) -> bool:
        return self.path.is_dir()


def single_runs(run: RunDir) -> list[RunDir]:
    """The single-seed run folders of a trained run: each replica's RUN/seed=S, or the run itself."""
    return [folder for _, folder in (run.replicas() if run.config.is_file() else [])] or [run]


def gan_config(option: GANOption, config: ReproduceConfig) -> GANConfig:
    """SPEC §3's defaults with the option's fields, and the reproduction's data, epochs, grids, seeds, device."""
    return dataclasses.replace(GANConfig(), **option.settings, data=config.data, epochs=config.gan_epochs,
                               grid_every=config.grid_every, replicas=config.replicas, device=config.device)


def vae_config(config: ReproduceConfig) -> VAEConfig:
    """SPEC §2's defaults on the importance-weighted bound, with the reproduction's data, epochs, seeds, device."""
    return VAEConfig(data=config.data, epochs=config.vae_epochs, replicas=config.replicas, device=config.device,
                     objective="iwae", train_samples=IWAE_TRAIN_SAMPLES)


def sample_files(beyond: Beyond) -> list[tuple[GANOption, RunDir, str, Path]]:
    """(option, single-seed run, sample set, its .npz) of every GAN option trained so far."""
    return [(option, run, name, run.path / f"{name}.npz") for option in GAN_OPTIONS
            for run in single_runs(beyond.gan(option)) for name in option.sample_sets()]


# --------------------------------------------------------------------------- the stages


def stage_gan_train(repro: Any, config: ReproduceConfig) -> None:
    from .data.protocols import load_protocol
    from .data.sources import load_raw
    from .reproduce import fresh_or_resumable, say
    from .train.gan import train_gan

    protocol = load_protocol("gan", load_raw(config.data))
    provenance = {**protocol.provenance, "train_images": len(protocol.train_images)}
    beyond = Beyond(repro.path)
    for option in GAN_OPTIONS:
        say(f"  {option.folder}: {option.title} ({option.flags})")
        run = beyond.gan(option)
        train_gan(gan_config(option, config), protocol.train_images, run, resume=fresh_or_resumable(run),
                  provenance=provenance)


def stage_gan_samples(repro: Any, config: ReproduceConfig) -> None:
    from .device import resolve_device
    from .evaluate.gan import load_generator, sample_images
    from .reproduce import save_images

    device = resolve_device(config.device)
    for _, run, name, path in sample_files(Beyond(repro.path)):  # each seed's own samples, from its own seed
        generator, saved = load_generator(run, device, raw=SAMPLE_SETS[name])
        save_images(path, sample_images(generator, config.score_samples, saved.seed))


def stage_vae_train(repro: Any, config: ReproduceConfig) -> None:
    from .reproduce import fresh_or_resumable
    from .train.vae import train_vae

    run = Beyond(repro.path).vae
    train_vae(vae_config(config), run, resume=fresh_or_resumable(run))


def stage_vae_eval(repro: Any, config: ReproduceConfig) -> None:
    from .evaluate.vae import evaluate_replicas, evaluate_run

    run, options = Beyond(repro.path).vae, VAEEvalConfig(iw=config.iw_samples, device=config.device)
    evaluate_replicas(run, options) if run.replicas() else evaluate_run(run, options)


def stage_scores(repro: Any, config: ReproduceConfig) -> dict[str, Any] | None:
    from .reproduce import score_sample_files

    beyond = Beyond(repro.path)
    return score_sample_files(repro, config, [path for *_, path in sample_files(beyond)])
