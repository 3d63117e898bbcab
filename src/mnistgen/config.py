"""Every default of mnistgen, as typed frozen dataclasses, their bounds, and their one-to-one mapping onto CLI flags
(``batch_size`` -> ``--batch-size``). Every config that leaves this module has passed :func:`validate`."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import numbers
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import MnistgenError, UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
IMAGE_SIDE = 28  # the digits are 28x28 pixels (SPEC §1)


Number = int | float


@dataclass(frozen=True)
class Bound:
    """The interval a numeric field must lie in: each end a number, the name of another field of the same config
    (``high="lr"``) or None. ``when=(name, value)``: only while field ``name`` equals ``value``. ``machine``: a bound
    of this machine, not of the run, which a stored config (:func:`from_dict`: perhaps trained elsewhere) may pass."""

    low: Number | str | None = None
    high: Number | str | None = None
    low_open: bool = False
    high_open: bool = False
    when: tuple[str, Any] | None = None
    machine: bool = False

    def admits(self, value: Number, config: Any) -> bool:
        low, high = (getattr(config, end) if isinstance(end, str) else end for end in (self.low, self.high))
        above_low = low is None or (value > low if self.low_open else value >= low)
        below_high = high is None or (value < high if self.high_open else value <= high)
        return above_low and below_high

    def requirement(self, integer: bool, config: Any | None = None) -> str:
        """What the bound asks for, in words: "a positive integer", "0 or more", "in (0, 1]", "<= --lr (0.001)"."""
        low, high = _end_text(self.low, config), _end_text(self.high, config)
        if self.low == 0 and self.high is None:
            if self.low_open:
                return "a positive integer" if integer else "a positive number"
            return "0 or more"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"{'<' if self.high_open else '<='} {high}"

    def summary(self) -> str:
        """As the flag's help shows it: "> 0", ">= 0", "in (0, 1]", "<= --lr under ..."."""
        low_only = self.low is not None and self.high is None  # "> 0" rather than "a positive number"
        return (f"{'>' if self.low_open else '>='} {_end_text(self.low)}" if low_only
                else self.requirement(integer=False)) + self.condition()

    def condition(self) -> str:
        return "" if self.when is None else f" under {_flag(self.when[0])} {self.when[1]}"


POSITIVE = Bound(low=0, low_open=True)
NON_NEGATIVE = Bound(low=0)
SEED_BOUND = Bound(low=0, high=2**64 - 1)
"""NumPy's SeedSequence refuses negative seeds and torch's generators seeds past 64 bits."""
THREADS_PER_CPU = 4  # torch's CPU kernels gain nothing past one thread per logical CPU; 4 leaves room to oversubscribe
# on purpose, and stays far below the thousands that crash torch or use up the process IDs
THREADS_BOUND = Bound(high=THREADS_PER_CPU * (os.cpu_count() or 1), machine=True)
_THREADS_HELP = f"CPU threads torch may use (0: torch's default, one per core; at most {THREADS_PER_CPU} per CPU)"
_WRITTEN_OUT_LIMIT = 2**32  # larger integers of the form 2**k - 1 are written as such in bounds


def _end_text(end: Number | str | None, config: Any | None = None) -> str:
    if isinstance(end, str):
        return _flag(end) if config is None else f"{_flag(end)} ({getattr(config, end)})"
    if isinstance(end, int) and end > _WRITTEN_OUT_LIMIT and (end + 1) & end == 0:
        return f"2**{(end + 1).bit_length() - 1} - 1"
    return str(end)


def option(default: Any, help: str, *bounds: Bound, check: Any = None) -> Any:  # noqa: A002 - mirrors argparse
    """A field with its flag's help and bounds; ``check(value, config)`` refuses (one line) what no bound describes."""
    return field(default=default, metadata={"help": help, "bounds": bounds, "check": check})


def bounds_of(f: dataclasses.Field) -> tuple[Bound, ...]:
    return f.metadata.get("bounds", ())


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1234,1235"`` -> (1234, 1235): distinct whole numbers within :data:`SEED_BOUND`; else a one-line error."""
    try:
        seeds = tuple(int(part.strip()) for part in text.split(","))
    except ValueError:
        raise MnistgenError(f"--seeds must be comma-separated whole numbers, got {text!r}") from None
    for seed in seeds:
        if not SEED_BOUND.admits(seed, None):
            raise MnistgenError(f"--seeds: each seed must be {SEED_BOUND.requirement(True)}, got {seed}")
    if len(set(seeds)) != len(seeds):
        raise MnistgenError(f"--seeds holds a seed twice: {text!r}")
    return seeds


def _check_seeds(text: str, config: Any) -> None:
    parse_seeds(text)
    if config.replicas != 1:
        raise MnistgenError("give --seeds or --replicas, not both (--replicas counts up from --seed)")


def _check_replicas(replicas: int, config: Any) -> None:
    if config.seeds is None and config.seed + replicas - 1 > SEED_BOUND.high:
        raise MnistgenError(f"--seed {config.seed} with --replicas {replicas} runs past the largest seed, "
                            f"{_end_text(SEED_BOUND.high)}")


def replica_seeds(config: Any) -> tuple[int, ...]:
    if config.seeds is not None:
        return parse_seeds(config.seeds)
    return tuple(range(config.seed, config.seed + config.replicas))


def is_replicated(config: Any) -> bool:
    return config.seeds is not None or config.replicas > 1


def replica_config(config: Any, seed: int) -> Any:
    """The single-seed config of one replica (what a separate run of that seed would be given)."""
    return dataclasses.replace(config, seed=seed, replicas=1, seeds=None)


_REPLICA_FOLDERS = "RUN then holds one single-seed run folder per seed, RUN/seed=N"
_REPLICAS_HELP = f"train this many seeds, counting up from --seed, as replicas of one batched run; {_REPLICA_FOLDERS}"
_SEEDS_HELP = ("comma-separated seeds trained as replicas of one batched run, instead of --seed and --replicas "
               f"(e.g. 1234,1235,1236); {_REPLICA_FOLDERS} (default: --seed and --replicas decide)")


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["mnist", "fashion-mnist", "kmnist", "mnist-sample"] = option(
        "mnist", "dataset to use; mnist-sample is the 5,000-digit sample of real MNIST shipped with mnistgen")
    data_dir: str | None = option(None, "folder holding the IDX files; missing ones are downloaded into it "
                                  "(default: $MNISTGEN_DATA_DIR, then the user cache)")
    offline: bool = option(False, "never touch the network (also: MNISTGEN_OFFLINE=1)")
    mirrors: str | None = option(None, "comma-separated base URLs to download from, in order "
                                 "(default: $MNISTGEN_MIRRORS, else the registry's mirrors)")
    download_timeout: float = option(
        15.0, "seconds to wait for a mirror (connecting, or for the next bytes) before trying the next one", POSITIVE)
    download_retries: int = option(2, "extra rounds over the mirrors after a server error or a cut-off transfer",
                                   NON_NEGATIVE)


_FLUSH_HELP = (
    "on the CPU, flush subnormal floats (below 1.2e-38) to zero while training, as GPUs do: the same mathematics to "
    "float rounding, and faster once training produces subnormals, on which the CPU's arithmetic is many times "
    "slower (the GAN's sigmoid pixels near 0, the VAE's iwae importance weights: 1.2-1.8x where they occur, "
    "docs/BENCHMARKS.md); --no-flush-denormals keeps IEEE arithmetic")
CHECKPOINT_SECONDS = 10.0  # the training a kill may cost, against ~15 ms a write of the VAE's 9.5 MB (BENCHMARKS)
_CHECKPOINT_HELP = (
    "write RUN/checkpoint.pt, and the epochs' lines of RUN/metrics.jsonl with it, at the end of the first epoch that "
    "ends this many seconds or more after the last write (0: after every epoch); the last epoch and Ctrl-C always "
    "write. A run killed otherwise resumes from the last write, to the same result")


def _cpu_kernels_help(networks: str) -> str:
    return (f"which fast path trains the {networks}: auto (the fastest accelerator that applies to the models as they "
            "are: mnistgen's C kernels on CPU, else PyTorch-only fast paths, else the reference path, with a one-line "
            "note naming the reason), native (insist on the C kernels on CPU: refused in one line where they do not "
            "apply), torch (PyTorch's kernels only), reference (autograd through the modules' forward, no "
            "accelerator). Same mathematics either way")


@dataclass(frozen=True)
class VAEConfig:
    """SPEC §2: the VAE and its reference training protocol ("hw")."""

    data: DataConfig = field(default_factory=DataConfig)
    protocol: Literal["hw", "full"] = option(
        "hw", "hw: first 10k train images, rounded; full: 60k with validation, dynamic binarization")
    epochs: int = option(200, "number of passes over the training images", POSITIVE)
    batch_size: int = option(100, "images per Adam step", POSITIVE)
    lr: float = option(1e-3, "Adam learning rate", POSITIVE)
    seed: int = option(1234, "seed that fixes the whole run", SEED_BOUND)
    replicas: int = option(1, _REPLICAS_HELP, POSITIVE, check=_check_replicas)
    seeds: str | None = option(None, _SEEDS_HELP, check=_check_seeds)
    objective: Literal["mc", "analytic", "iwae"] = option(
        "mc", "mc: Eq. 2, one-sample E_q[log p(x|z) + log p(z) - log q(z|x)]; analytic: Eq. 1, closed-form KL; "
        "iwae: the importance-weighted bound of Burda et al. (2016), log (1/K) sum_k p(x, z_k) / q(z_k|x) with "
        "K = --train-samples")
    train_samples: int = option(
        1, "K, draws of z per image in each training step: iwae trains on the K-sample bound; mc and analytic on "
        "the mean of K one-sample ELBOs (a lower-variance estimate of the same ELBO)", POSITIVE)
    latent_dim: int = option(2, "dimension D_z of the latent space", POSITIVE)
    hidden: int = option(500, "width of the tanh hidden layer of encoder and decoder", POSITIVE)
    validation_size: int = option(10000, "full protocol: training images held out for validation", POSITIVE)
    lr_schedule: Literal["none", "cosine", "step"] = option(
        "none", "learning rate by epoch: none (constant, SPEC), cosine (from --lr down to --lr-min over the "
        "epochs) or step (multiplied by --lr-decay every --lr-decay-every epochs)")
    lr_min: float = option(1e-5, "cosine schedule: learning rate of the last epoch",
                           POSITIVE, Bound(high="lr", when=("lr_schedule", "cosine")))
    lr_decay: float = option(
        0.5, "step schedule: factor applied to the learning rate at each step", Bound(low=0, high=1, low_open=True))
    lr_decay_every: int = option(100, "step schedule: epochs between two decays", POSITIVE)
    threads: int = option(0, _THREADS_HELP, NON_NEGATIVE, THREADS_BOUND)
    flush_denormals: bool = option(True, _FLUSH_HELP)
    checkpoint_seconds: float = option(CHECKPOINT_SECONDS, _CHECKPOINT_HELP, NON_NEGATIVE)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")
    cpu_kernels: Literal["auto", "native", "torch", "reference"] = option(
        "auto", _cpu_kernels_help("encoder and decoder"))


def parse_betas(text: str) -> tuple[float, float]:
    try:
        betas = tuple(float(part) for part in text.split(","))
    except ValueError:
        betas = ()
    if len(betas) != 2:
        raise MnistgenError(f"--betas must be two comma-separated numbers B1,B2 (e.g. 0.5,0.999), got {text!r}")
    if not all(0.0 <= beta < 1.0 for beta in betas):
        raise MnistgenError(f"--betas: each of B1,B2 must be in [0, 1), got {text!r}")
    return betas


GAN_RECIPES: dict[str, dict[str, Any]] = {
    "spec": {"lr_d": 2e-4, "lr_g": 2e-4, "betas": "0.9,0.999", "ema_decay": None, "ema_warmup": False,
             "batch_size": 256, "r1_gamma": None, "lookahead_steps": None, "mmd_weight": None},
    # the best of the trainings measured over 5 seeds at epochs 30 and 100 (docs/BENCHMARKS.md)
    "improved": {"lr_d": 3e-3, "lr_g": 6e-4, "betas": "0.0,0.99", "ema_decay": 0.9999, "ema_warmup": True,
                 "batch_size": 64, "r1_gamma": 0.01, "lookahead_steps": 5, "mmd_weight": 10.0},
}
"""``--recipe``'s values (applied by :func:`config_from_args`); ``spec`` is SPEC §3's, the fields' own defaults."""


def recipe_text(values: dict[str, Any]) -> str:
    """A recipe's values as the flags that give them: "--lr-d 0.0004, --betas 0.5,0.999, --ema-warmup, ..."."""
    def flag(name: str, value: Any) -> str:
        dashed = name.replace("_", "-")
        if isinstance(value, bool):
            return f"--{dashed}" if value else f"--no-{dashed}"
        return f"--{dashed} {'off' if value is None else value}"

    return ", ".join(flag(name, value) for name, value in values.items())


_RECIPE_HELP = ("a set of training options, applied to those not given as flags: "
                + "; ".join(f"{name} ({recipe_text(values)})" for name, values in GAN_RECIPES.items())
                + "; improved is the best combination measured (docs/BENCHMARKS.md). config.json records the recipe "
                "and every value taken")


@dataclass(frozen=True)
class GANConfig:
    """SPEC §3: the GAN and its training defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = option(100, "number of passes over the 60k training images", POSITIVE)
    batch_size: int = option(256, "images per step (the last partial batch is dropped)", POSITIVE)
    lr_d: float = option(2e-4, "Adam learning rate of the discriminator", POSITIVE)
    lr_g: float = option(2e-4, "Adam learning rate of the generator", POSITIVE)
    betas: str = option(
        "0.9,0.999", "Adam's decay rates B1,B2 of both networks' optimizers, each in [0, 1); the default is "
        "PyTorch's, as SPEC §3", check=lambda text, config: parse_betas(text))
    ema_decay: float | None = option(
        None, "keep an exponential moving average of G's weights, ema = D*ema + (1-D)*w after each G step, starting "
        "from G's initial weights (so it needs well over 1/(1-D) steps; 234 steps per epoch with SPEC's defaults); "
        "RUN/grids, `gan plot`, `gan sample` and scores then use the average (RUN/grids/raw and --raw: the trained "
        "G) (default: off, as SPEC §3)", Bound(low=0, high=1, low_open=True, high_open=True))
    ema_warmup: bool = option(
        False, "with --ema-decay D: G step n of the run (from 0) averages with the decay min(D, (1 + n) / (10 + n)) "
        "rather than D, so the average follows G closely at first and forgets G's initial weights (TensorFlow's "
        "ExponentialMovingAverage with num_updates); without --ema-decay there is no average to warm up")
    r1_gamma: float | None = option(
        None, "R1 penalty on D: D's loss gains gamma/2 times the batch's mean of the squared norm of the gradient of "
        "D's logit with respect to each real image, which keeps D smooth where the data are; taken on every "
        "--r1-every-th step, weighted by that many (default: off, as SPEC §3)", Bound(low=0, low_open=True))
    r1_every: int = option(16, "--r1-gamma: steps from one penalized step to the next", POSITIVE)
    translate: int = option(
        0, "augment every image D sees, real and generated alike (DiffAugment): shift it by up to this many pixels "
        "along each axis, drawn per image, zeros shifted in (default: 0, off, as SPEC §3)",
        Bound(low=0, high=IMAGE_SIDE - 1))
    cutout: int = option(
        0, "augment every image D sees, after any --translate: zero a square of this side centred on a pixel drawn "
        "per image (default: 0, off, as SPEC §3)", Bound(low=0, high=IMAGE_SIDE))
    lookahead_steps: int | None = option(
        None, "lookahead on both players (Lookahead-minmax, Chavdarova et al., 2021): on every this many steps of the "
        "run, slow copies of G's and D's weights step --lookahead-alpha of the way towards the weights, which are "
        "then put back on them (the slow copies start at the initial weights; Adam's moments are kept); it damps the "
        "players' rotation around each other (default: off, as SPEC §3)", POSITIVE)
    lookahead_alpha: float = option(
        0.5, "--lookahead-steps: how far the slow weights step towards the weights, a fraction of the way",
        Bound(low=0, high=1, low_open=True))
    mmd_weight: float | None = option(
        None, "G's objective gains this weight times the squared maximum mean discrepancy between its batch and the "
        "step's real batch, in pixel space (Gaussian kernels, widths from nearest neighbours to the whole set): D "
        "judges one image at a time, so only this term sees how often G draws each kind of digit; it brings the "
        "digits' shares nearer the data's (default: off, as SPEC §3)", Bound(low=0, low_open=True))
    recipe: Literal["spec", "improved"] = option("spec", _RECIPE_HELP)
    zdim: int = option(64, "dimension of the generator's input noise z ~ U[-1, 1]^zdim", POSITIVE)
    seed: int = option(2, "seed that fixes the whole run", SEED_BOUND)
    replicas: int = option(1, _REPLICAS_HELP, POSITIVE, check=_check_replicas)
    seeds: str | None = option(None, _SEEDS_HELP, check=_check_seeds)
    grid_every: int = option(10, "save an 8x8 grid from fixed noise every this many epochs", POSITIVE)
    checkpoint_seconds: float = option(CHECKPOINT_SECONDS, _CHECKPOINT_HELP, NON_NEGATIVE)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")
    threads: int = option(0, _THREADS_HELP, NON_NEGATIVE, THREADS_BOUND)
    flush_denormals: bool = option(True, _FLUSH_HELP)
    cpu_kernels: Literal["auto", "native", "torch", "reference"] = option(
        "auto", _cpu_kernels_help("generator and discriminator"))


RESUMABLE_FIELDS: dict[type, tuple[str, ...]] = {
    VAEConfig: ("epochs", "device", "threads", "cpu_kernels", "flush_denormals", "checkpoint_seconds"),
    GANConfig: ("epochs", "grid_every", "device", "threads", "cpu_kernels", "flush_denormals", "checkpoint_seconds")}
"""The settings a ``--resume`` may change, by config class: how to compute, not what (and where the data are)."""


def changed_settings(saved: Any, wanted: Any) -> list[tuple[str, Any, Any]]:
    """(name, saved value, wanted value) of each setting in which ``wanted`` differs from ``saved``: every field
    but where the data are found, of which only the dataset counts."""
    differ = [(f.name, getattr(saved, f.name), getattr(wanted, f.name)) for f in dataclasses.fields(wanted)
              if f.name != "data" and getattr(saved, f.name) != getattr(wanted, f.name)]
    if saved.data.dataset != wanted.data.dataset:
        differ.append(("dataset", saved.data.dataset, wanted.data.dataset))
    return differ


def fixed_settings_changed(saved: Any, wanted: Any) -> list[tuple[str, Any, Any]]:
    """:func:`changed_settings` less those a ``--resume`` may change (:data:`RESUMABLE_FIELDS`)."""
    return [change for change in changed_settings(saved, wanted) if change[0] not in RESUMABLE_FIELDS[type(wanted)]]


@dataclass(frozen=True)
class ClassifierConfig:
    """The small MNIST classifier behind ``mnistgen score``: trained once, shipped in ``mnistgen/assets``."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = option(5, "passes over the training images (the epoch with the best validation accuracy is kept)",
                         POSITIVE)
    batch_size: int = option(128, "images per Adam step", POSITIVE)
    lr: float = option(1e-3, "Adam learning rate (decayed by a cosine to 0 over the epochs)", POSITIVE)
    seed: int = option(0, "seed that fixes the whole run", SEED_BOUND)
    validation_size: int = option(
        10000, "last training images held out for validation (they are also the real-vs-real reference)", POSITIVE)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class ScoreConfig:
    data: DataConfig = field(default_factory=DataConfig)
    weights: str | None = option(
        None, "classifier weights, a .pt with its .json beside it (default: the ones shipped with mnistgen)")
    batch_size: int = option(1000, "images per forward pass of the classifier", POSITIVE)
    samples: int = option(
        10000, "images drawn from each seed's model when a run folder is scored (at least 2; VAE: decoder means "
        "p(x|z), GAN: G(z))", POSITIVE)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class ReproduceConfig:
    """``mnistgen reproduce``; ``--quick`` sets :data:`REPRODUCE_QUICK`'s fields not given as flags: same pipeline."""

    data: DataConfig = field(default_factory=DataConfig)
    vae_epochs: int = option(VAEConfig.epochs, "VAE training epochs (hw protocol)", POSITIVE)
    gan_epochs: int = option(GANConfig.epochs, "GAN training epochs", POSITIVE)
    grid_every: int = option(GANConfig.grid_every, "save the GAN's 8x8 grid every this many epochs", POSITIVE)
    iw_samples: int = option(1000, "K, importance samples per test image for the estimate of log p(x)", POSITIVE)
    score_samples: int = option(10000, "samples of each model given to the sample-quality score", POSITIVE)
    replicas: int = option(
        1, "train each model with this many seeds (counting up from its default seed), evaluate and score each, and "
        "report every number as the mean with its 95 percent Student-t interval over the seeds", POSITIVE)
    beyond: bool = option(
        False, "after SPEC's runs, train and score the options beyond SPEC (the GAN with an EMA of G, Adam betas "
        "0.5,0.999, two learning rates, and --recipe improved; the VAE on the importance-weighted bound) with the same "
        "epochs and seeds, shown in the report's 'Beyond the spec' section; may be added on --resume")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


REPRODUCE_QUICK: dict[str, Any] = {"vae_epochs": 10, "gan_epochs": 3, "grid_every": 1, "iw_samples": 50}


@dataclass(frozen=True)
class VAEEvalConfig:
    """``mnistgen vae eval|plot|sample``: estimates from, figures of and draws from a trained VAE run."""

    iw: int = option(1000, "K, importance samples per test image for the estimate of log p(x)", POSITIVE)
    samples: int = option(10, "Monte Carlo samples of z per test image for the test ELBO", POSITIVE)
    seed: int | None = option(None, "seed of the random draws (default: the run's training seed)", SEED_BOUND)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class ElboEstimatorsConfig:
    """``mnistgen experiment elbo-estimators RUN``: Eq. 1 against Eq. 2 on a trained VAE (docs/theory.md §12.1)."""

    data: DataConfig = field(default_factory=DataConfig)
    images: int = option(100, "first test images used, one mini-batch (SPEC's training batch is 100)", POSITIVE)
    draws: int = option(1000, "independent draws of eps ~ N(0, I) per image, the same for both estimators", POSITIVE)
    seed: int = option(0, "seed of the draws", SEED_BOUND)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class FixedEncoderConfig:
    """``mnistgen experiment fixed-encoder RUN``: trained encoder vs N(0, I) vs one shared Gaussian q (§12.2)."""

    data: DataConfig = field(default_factory=DataConfig)
    draws: int = option(
        10, "samples of z per test image for the trained encoder's ELBO (Eq. 1, closed-form KL)", POSITIVE)
    shared_samples: int = option(
        1000, "samples of z for the two shared q's: one set to fit on the training set, a fresh one for the test set",
        POSITIVE)
    max_iterations: int = option(200, "L-BFGS iterations to fit the shared Gaussian q, from each start", POSITIVE)
    starts: int = option(
        5, "starting points of the shared Gaussian's fit: N(0, I), then N(m, I) with m drawn from the prior", POSITIVE)
    seed: int = option(0, "seed of the draws", SEED_BOUND)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class GANSampleConfig:
    seed: int | None = option(None, "seed of the noise z (default: the run's training seed)", SEED_BOUND)
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")
    raw: bool = option(False, "a run trained with --ema-decay: sample the trained G rather than the moving average "
                       "of its weights (the default there)")


@dataclass(frozen=True)
class GANPlotConfig:
    epochs: str = option("0,30,70", "comma-separated epochs whose saved grids are shown side by side (SPEC §3)")
    raw: bool = option(False, "a run trained with --ema-decay: show the trained G's grids (RUN/grids/raw) rather "
                       "than those of the moving average of its weights (the default there)")


_TYPE_NAMES = {bool: "true or false", str: "text"}


def validate(config: Any, stored: bool = False) -> None:
    """Refuse, in one line naming its flag, the first value no run could use (``stored``: machine bounds aside)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        field_type = _base_type(hints[f.name])
        optional = field_type is not hints[f.name]
        if dataclasses.is_dataclass(field_type):
            if not isinstance(value, field_type):
                raise MnistgenError(f"{f.name} must be a JSON object of {field_type.__name__}'s fields, got {value!r}")
            validate(value, stored)
        elif value is None and optional:
            continue
        elif typing.get_origin(field_type) is Literal:
            if value not in typing.get_args(field_type):
                raise MnistgenError(f"{_flag(f.name)} must be one of {', '.join(map(str, typing.get_args(field_type)))}"
                                    f", got {value!r}")
        elif bounds_of(f):  # a bound also refuses a value of the wrong kind, saying which numbers it takes
            _check_bounds(f.name, value, field_type is int, bounds_of(f), config, stored)
        elif not isinstance(value, field_type):  # text or a switch: every number has a bound
            raise MnistgenError(f"{_flag(f.name)} must be {_TYPE_NAMES.get(field_type, field_type.__name__)}, "
                                f"got {value!r}")
        if f.metadata.get("check") is not None and value is not None:
            f.metadata["check"](value, config)


def _check_bounds(name: str, value: Any, integer: bool, bounds: tuple[Bound, ...], config: Any, stored: bool) -> None:
    for bound in bounds:
        if (bound.when is not None and getattr(config, bound.when[0]) != bound.when[1]) or (bound.machine and stored):
            continue
        if not (_is_number(value, integer) and bound.admits(value, config)):
            requirement = bound.requirement(integer, config) + bound.condition()
            raise MnistgenError(f"{_flag(name)} must be {requirement}, got {value!r}")


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild and validate a config from :func:`to_dict`'s output; unknown keys are refused, missing ones default."""
    config = _build(cls, values)
    validate(config, stored=True)
    return config


def _build(cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise MnistgenError(f"a {cls.__name__} must be a JSON object of its fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise MnistgenError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            value = _build(hints[name], value)
        kwargs[name] = value
    return cls(**kwargs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``Literal[...]`` stays as it is."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return tp


OFF = "off"  # the flag value of a setting whose default is None: None ("--ema-decay off" over a recipe's value)
_TURNED_OFF = object()  # what the parser holds for OFF (None would mean "not given")


def _parser_of(tp: type, can_be_off: bool = False):
    def parse(text: str):
        if can_be_off and text.strip().lower() == OFF:
            return _TURNED_OFF
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {tp.__name__} value: {text!r}") from None

    parse.__name__ = tp.__name__
    return parse


def _can_be_off(f: dataclasses.Field, tp: Any) -> bool:
    """A number whose default is None (``--ema-decay``): ``off`` sets it to None over a recipe's value."""
    return f.default is None and tp in (int, float)


def _flag_fields(cls: type, exclude: tuple[str, ...] = ()) -> Iterator[tuple[dataclasses.Field, Any]]:
    """Each field of ``cls`` (a nested config's in its place) that is a flag, with its type, ``int | None`` -> int."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            yield from _flag_fields(tp, exclude)
        elif f.name not in exclude:
            yield f, tp


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    for f, tp in _flag_fields(cls, exclude):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help", "")
        shown = default is not None and "(default:" not in text  # not where the help says it, nor as None
        details = [*([f"default: {default}"] if shown else []), *(bound.summary() for bound in bounds_of(f))]
        help_text = f"{text} ({'; '.join(details)})" if details else text  # "... (default: 0.5; in (0, 1])"
        flag = _flag(f.name)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(tp) is Literal:
            parser.add_argument(flag, dest=f.name, choices=list(typing.get_args(tp)), default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_parser_of(tp, _can_be_off(f, tp)), default=None,
                                metavar=f.name.upper(), help=help_text)


def config_from_args(cls: type, args: argparse.Namespace, base: Any | None = None) -> Any:
    """Build ``cls`` from parsed flags over ``base`` (or the defaults, a ``--recipe``'s :data:`GAN_RECIPES` fields
    applied first), then validate it (:class:`UsageError`: exit 2)."""
    if base is None:
        base = cls()
        recipe = getattr(args, "recipe", None)
        if cls is GANConfig and recipe in GAN_RECIPES:
            base = dataclasses.replace(base, recipe=recipe, **GAN_RECIPES[recipe])
    config = _replace_from_args(cls, args, base)
    try:
        validate(config)
    except MnistgenError as exc:  # ``base`` was valid: a flag's value is out of bounds
        raise UsageError(str(exc)) from None
    return config


def _replace_from_args(cls: type, args: argparse.Namespace, base: Any) -> Any:
    hints = typing.get_type_hints(cls)
    changes = {}
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            changes[f.name] = _replace_from_args(tp, args, getattr(base, f.name))
        elif getattr(args, f.name, None) is not None:
            changes[f.name] = None if getattr(args, f.name) is _TURNED_OFF else getattr(args, f.name)
    return dataclasses.replace(base, **changes)


def _coerce(value: Any, tp: Any) -> Any:
    """What a notebook passes (a path, a NumPy integer, an int for a float) as the CLI's parsed flag would hold it."""
    if isinstance(value, bool) or value is None:
        return value
    if tp is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if tp is int and isinstance(value, numbers.Integral):
        return int(value)
    if tp is float and isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an integer past the floats' range (TOML's have no bound): refused as infinite
            return math.inf if value > 0 else -math.inf
    return value


def config_from_settings(cls: type, settings: dict[str, Any], base: Any | None, what: str,
                         exclude: tuple[str, ...] = ()) -> Any:
    """``cls`` built from keyword settings exactly as the CLI builds it from flags: one keyword per flag (``data_dir=``
    too), None for "not given", over ``base`` (the stored config on resume) or the defaults; but None for a number
    whose default is None (``ema_decay``, ``r1_gamma``, ``lookahead_steps``) is that setting off, as its flag's
    ``off`` is (over a recipe's value)."""
    fields = list(_flag_fields(cls, exclude))
    known = {f.name: tp for f, tp in fields}  # {name: type}, nested configs' fields too
    can_be_off = {f.name for f, tp in fields if _can_be_off(f, tp)}
    unknown = [name for name in settings if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        names = ", ".join(repr(name) for name in unknown)
        hint = f"did you mean {close[0]!r}?" if close else f"the settings are: {', '.join(known)}"
        raise UsageError(f"{what}: unknown setting{'s' if len(unknown) > 1 else ''} {names} ({hint})")
    values = {name: _TURNED_OFF if value is None and name in can_be_off else _coerce(value, known[name])
              for name, value in settings.items()}
    return config_from_args(cls, argparse.Namespace(**values), base)
