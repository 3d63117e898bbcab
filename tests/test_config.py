"""config.py's dataclass <-> flag <-> JSON mapping, the bounds declared beside each field, and the top-level CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistgen import __version__, config
from mnistgen.cli import OneLineParser, build_parser, main
from mnistgen.config import (
    SEED_BOUND,
    DataConfig,
    GANConfig,
    VAEConfig,
    add_config_arguments,
    bounds_of,
    config_from_args,
    from_dict,
    to_dict,
    validate,
)
from mnistgen.errors import MnistgenError

CONFIG_CLASSES = [obj for obj in vars(config).values()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == config.__name__
                  and obj is not config.Bound]  # a field's bound, not a config


def leaf_fields(cls) -> list[str]:
    """Every field that becomes a flag: nested config fields contribute their own."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names += leaf_fields(hints[f.name])
        else:
            names.append(f.name)
    return names


def parser_for(cls, exclude=()) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="t")
    add_config_arguments(parser, cls, exclude)
    return parser


# --------------------------------------------------------------------------- JSON


def test_there_are_config_classes_to_check():
    assert {DataConfig, VAEConfig, config.GANConfig} <= set(CONFIG_CLASSES)


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_defaults_survive_a_json_round_trip(cls):
    original = cls()
    assert from_dict(cls, json.loads(json.dumps(to_dict(original)))) == original


def test_changed_values_survive_a_json_round_trip():
    data = DataConfig(dataset="kmnist", data_dir="/x", offline=True, mirrors="http://127.0.0.1:1/",
                      download_timeout=2.5, download_retries=0)
    vae = VAEConfig(data=data, epochs=3, lr=0.01, objective="analytic")
    text = json.dumps(to_dict(vae))
    assert json.loads(text)["data"]["dataset"] == "kmnist"  # nested configs are nested objects
    assert from_dict(VAEConfig, json.loads(text)) == vae


def test_from_dict_rejects_unknown_keys_and_defaults_missing_ones():
    with pytest.raises(MnistgenError, match="unknown VAEConfig field\\(s\\): epoch, lerning_rate"):
        from_dict(VAEConfig, {"epoch": 3, "lerning_rate": 1})
    with pytest.raises(MnistgenError, match="unknown DataConfig field\\(s\\): folder"):
        from_dict(VAEConfig, {"data": {"folder": "/x"}})
    assert from_dict(VAEConfig, {"epochs": 7}) == VAEConfig(epochs=7)


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_one_flag_per_field_with_help_and_default(cls):
    parser = parser_for(cls)
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}
    assert set(flags) == {"--" + name.replace("_", "-") for name in leaf_fields(cls)}
    for flag, action in flags.items():
        # each default shown once; a field unset by default (None) says in words what happens, never "None"
        assert action.help.count("(default: ") == 1 and len(action.help) > len("(default: )") + 5, flag
        assert "None" not in action.help, flag
    assert config_from_args(cls, parser.parse_args([])) == cls()


def test_flags_set_their_fields_with_the_right_types():
    args = parser_for(VAEConfig).parse_args([
        "--epochs", "3", "--lr", "0.5", "--objective", "analytic", "--dataset", "kmnist", "--data-dir", "/d",
        "--offline", "--mirrors", "http://127.0.0.1:1/", "--download-timeout", "2", "--download-retries", "0",
    ])
    vae = config_from_args(VAEConfig, args)
    assert (vae.epochs, vae.lr, vae.objective) == (3, 0.5, "analytic")
    assert vae.data == DataConfig("kmnist", "/d", True, "http://127.0.0.1:1/", 2.0, 0)
    assert isinstance(vae.data.download_timeout, float) and isinstance(vae.epochs, int)


def test_flags_override_a_base_and_keep_the_rest():
    base = VAEConfig(epochs=9, data=DataConfig(offline=True))
    vae = config_from_args(VAEConfig, parser_for(VAEConfig).parse_args(["--lr", "0.1", "--no-offline"]), base)
    assert (vae.epochs, vae.lr, vae.data.offline) == (9, 0.1, False)


def test_excluded_fields_have_no_flag_and_keep_their_default():
    parser = parser_for(DataConfig, exclude=("offline", "mirrors"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--offline"])
    assert config_from_args(DataConfig, parser.parse_args([])) == DataConfig()


@pytest.mark.parametrize(("flags", "message"), [
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--download-timeout", "0"], "--download-timeout must be a positive number, got 0.0"),
    (["--download-timeout", "inf"], "--download-timeout must be a positive number, got inf"),
    (["--download-retries", "-1"], "--download-retries must be 0 or more, got -1"),
    (["--lr-decay", "1.5"], "--lr-decay must be in (0, 1], got 1.5"),
    (["--threads", "-1"], "--threads must be 0 or more, got -1"),
    (["--threads", "3000"], f"--threads must be <= {4 * (os.cpu_count() or 1)}, got 3000"),  # 4 per CPU
    (["--seed", "-1"], "--seed must be in [0, 2**64 - 1], got -1"),
    (["--lr-schedule", "cosine", "--lr", "0.01", "--lr-min", "0.1"],
     "--lr-min must be <= --lr (0.01) under --lr-schedule cosine, got 0.1"),
])
def test_impossible_values_are_user_errors(flags, message):
    with pytest.raises(MnistgenError) as error:
        config_from_args(VAEConfig, parser_for(VAEConfig).parse_args(flags))
    assert str(error.value) == message


def test_help_shows_each_bound_after_the_default():
    actions = {a.dest: a for a in parser_for(VAEConfig)._actions}
    assert actions["lr_decay"].help.endswith("(default: 0.5; in (0, 1])")
    assert actions["lr_min"].help.endswith("(default: 1e-05; > 0; <= --lr under --lr-schedule cosine)")
    assert actions["threads"].help.endswith(f"(default: 0; >= 0; <= {4 * (os.cpu_count() or 1)})")  # this machine's
    assert actions["seed"].help.endswith("(default: 1234; in [0, 2**64 - 1])")
    assert actions["objective"].help.endswith("(default: mc)")  # no bound, nothing more


# --------------------------------------------------------------------------- bounds

TINY = math.ulp(0.0)  # the smallest positive float
BIGGEST = sys.float_info.max
NEXT_ABOVE_ONE = math.nextafter(1.0, 2.0)
MAX_SEED = 2**64 - 1

POSITIVE_INT = [(1, 0, "a positive integer")]
POSITIVE_FLOAT = [(TINY, 0.0, "a positive number"), (BIGGEST, math.inf, "a positive number")]
NON_NEGATIVE_INT = [(0, -1, "0 or more")]
SEED = [(0, -1, "in [0, 2**64 - 1]"), (MAX_SEED, MAX_SEED + 1, "in [0, 2**64 - 1]")]

EXPECTED_BOUNDS = {
    # field name: [(the last value accepted, the first refused beyond it, what the refusal asks for), ...]
    "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT, "latent_dim": POSITIVE_INT, "hidden": POSITIVE_INT,
    "validation_size": POSITIVE_INT, "lr_decay_every": POSITIVE_INT, "zdim": POSITIVE_INT,
    "grid_every": POSITIVE_INT, "vae_epochs": POSITIVE_INT, "gan_epochs": POSITIVE_INT, "iw_samples": POSITIVE_INT,
    "score_samples": POSITIVE_INT, "iw": POSITIVE_INT, "samples": POSITIVE_INT, "images": POSITIVE_INT,
    "draws": POSITIVE_INT, "shared_samples": POSITIVE_INT, "max_iterations": POSITIVE_INT, "starts": POSITIVE_INT,
    "lr": POSITIVE_FLOAT, "lr_d": POSITIVE_FLOAT, "lr_g": POSITIVE_FLOAT, "lr_min": POSITIVE_FLOAT,
    "r1_gamma": POSITIVE_FLOAT, "r1_every": POSITIVE_INT, "lookahead_steps": POSITIVE_INT, "mmd_weight": POSITIVE_FLOAT,
    "lookahead_alpha": [(TINY, 0.0, "in (0, 1]"), (1.0, NEXT_ABOVE_ONE, "in (0, 1]")],
    "translate": [(0, -1, "in [0, 27]"), (27, 28, "in [0, 27]")],
    "cutout": [(0, -1, "in [0, 28]"), (28, 29, "in [0, 28]")],
    "lr_decay": [(TINY, 0.0, "in (0, 1]"), (1.0, NEXT_ABOVE_ONE, "in (0, 1]")],
    "ema_decay": [(TINY, 0.0, "in (0, 1)"), (math.nextafter(1.0, 0.0), 1.0, "in (0, 1)")],
    "download_timeout": POSITIVE_FLOAT,
    "download_retries": NON_NEGATIVE_INT,
    "threads": NON_NEGATIVE_INT,
    "checkpoint_seconds": [(0.0, -TINY, "0 or more"), (BIGGEST, math.inf, "0 or more")],
    "seed": SEED,
    "replicas": POSITIVE_INT,
    "train_samples": POSITIVE_INT,
}

UNBOUNDED_BY_DESIGN: set[tuple[str, str]] = set()
"""(class, field) pairs of numeric fields that accept any value of their type; none so far."""


def field_type(cls, name: str):
    """``int | None`` -> ``int``."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


BOUNDED_FIELDS = [(cls, f.name) for cls in CONFIG_CLASSES for f in dataclasses.fields(cls) if bounds_of(f)]
NUMERIC_FIELDS = [(cls, f.name) for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)
                  if field_type(cls, f.name) in (int, float)]
BOUND_EDGES = [(cls, name, *edge) for cls, name in BOUNDED_FIELDS for edge in EXPECTED_BOUNDS.get(name, ())]


def ids(value):
    return value.__name__ if isinstance(value, type) else None


def test_every_numeric_field_declares_a_bound_or_is_unbounded_by_design():
    undeclared = {(cls.__name__, name) for cls, name in NUMERIC_FIELDS if (cls, name) not in BOUNDED_FIELDS}
    assert undeclared == UNBOUNDED_BY_DESIGN, "declare a Bound with option(), or list the field as unbounded"
    assert {name for _, name in BOUNDED_FIELDS} == set(EXPECTED_BOUNDS), "EXPECTED_BOUNDS must match the fields"


def test_bounds_refer_to_fields_of_their_own_config():
    for cls, name in BOUNDED_FIELDS:
        names = {f.name for f in dataclasses.fields(cls)}
        for bound in bounds_of(next(f for f in dataclasses.fields(cls) if f.name == name)):
            referred = [end for end in (bound.low, bound.high) if isinstance(end, str)]
            referred += [bound.when[0]] if bound.when else []
            assert set(referred) <= names, (cls.__name__, name, referred)


@pytest.mark.parametrize(("cls", "name", "inside", "outside", "requirement"), BOUND_EDGES, ids=ids)
def test_each_bound_admits_its_edge_and_refuses_the_next_value_naming_the_flag(cls, name, inside, outside,
                                                                               requirement):
    validate(dataclasses.replace(cls(), **{name: inside}))
    flag = "--" + name.replace("_", "-")
    with pytest.raises(MnistgenError) as error:
        validate(dataclasses.replace(cls(), **{name: outside}))
    assert str(error.value) == f"{flag} must be {requirement}, got {outside!r}"


@pytest.mark.parametrize(("cls", "name"), [(c, n) for c, n in BOUNDED_FIELDS if field_type(c, n) is float], ids=ids)
@pytest.mark.parametrize("value", [math.nan, -math.nan, math.inf, -math.inf])
def test_bounded_floats_refuse_nan_and_infinities(cls, name, value):
    with pytest.raises(MnistgenError, match=f"^--{name.replace('_', '-')} must be .*, got -?(nan|inf)$"):
        validate(dataclasses.replace(cls(), **{name: value}))


@pytest.mark.parametrize(("name", "value"), [
    ("epochs", "3"), ("epochs", 3.0), ("epochs", True), ("epochs", None), ("lr", "0.1"), ("lr", False), ("lr", None),
])
def test_bounded_fields_refuse_values_of_the_wrong_kind(name, value):
    with pytest.raises(MnistgenError) as error:
        validate(VAEConfig(**{name: value}))
    assert str(error.value).startswith(f"--{name} must be a positive") and str(error.value).endswith(repr(value))


def test_an_unset_optional_seed_is_not_checked_but_a_set_one_is():
    validate(config.VAEEvalConfig(seed=None))
    validate(config.GANSampleConfig(seed=MAX_SEED))
    with pytest.raises(MnistgenError, match="--seed must be in"):
        validate(config.GANSampleConfig(seed=-1))


def test_seed_bound_is_what_numpy_and_torch_accept():
    np.random.SeedSequence([SEED_BOUND.low, 1])
    torch.Generator().manual_seed(SEED_BOUND.high)
    with pytest.raises(ValueError):
        np.random.SeedSequence([SEED_BOUND.low - 1, 1])
    with pytest.raises((ValueError, RuntimeError, OverflowError)):
        torch.Generator().manual_seed(SEED_BOUND.high + 1)


@pytest.mark.parametrize("schedule", ["none", "step"])
def test_lr_min_above_lr_is_fine_without_the_cosine_schedule(schedule):
    validate(VAEConfig(lr_schedule=schedule, lr=1e-3, lr_min=1e-2))


def test_cosine_schedule_needs_lr_min_at_most_lr():
    validate(VAEConfig(lr_schedule="cosine", lr=1e-3, lr_min=1e-3))
    with pytest.raises(MnistgenError) as error:
        validate(VAEConfig(lr_schedule="cosine", lr=1e-3, lr_min=math.nextafter(1e-3, 1.0)))
    assert str(error.value) == "--lr-min must be <= --lr (0.001) under --lr-schedule cosine, got 0.0010000000000000002"
    with pytest.raises(MnistgenError, match="^--lr-min must be a positive number, got 0.0$"):
        validate(VAEConfig(lr_schedule="cosine", lr_min=0.0))  # the always-on bound still applies


@pytest.mark.parametrize("cls", [cls for cls in CONFIG_CLASSES if "data" in {f.name for f in dataclasses.fields(cls)}],
                         ids=ids)
def test_nested_data_config_bounds_are_checked(cls):
    validate(cls(data=DataConfig(download_timeout=TINY, download_retries=0)))
    with pytest.raises(MnistgenError, match="^--download-timeout must be a positive number, got -1.0$"):
        validate(cls(data=DataConfig(download_timeout=-1.0)))
    with pytest.raises(MnistgenError, match="^--download-retries must be 0 or more, got -1$"):
        validate(cls(data=DataConfig(download_retries=-1)))


@pytest.mark.parametrize(("values", "message"), [
    ({"lr_decay": 1.5}, "--lr-decay must be in (0, 1], got 1.5"),
    ({"seed": -5}, "--seed must be in [0, 2**64 - 1], got -5"),
    ({"epochs": "200"}, "--epochs must be a positive integer, got '200'"),
    ({"data": {"download_retries": -1}}, "--download-retries must be 0 or more, got -1"),
    ({"lr_schedule": "cosine", "lr": 0.001, "lr_min": 0.01},
     "--lr-min must be <= --lr (0.001) under --lr-schedule cosine, got 0.01"),
    ({"device": "tpu"}, "--device must be one of auto, cpu, cuda, mps, got 'tpu'"),
    ({"cpu_kernels": "fast"}, "--cpu-kernels must be one of auto, native, torch, reference, got 'fast'"),
])
def test_from_dict_refuses_a_config_json_out_of_bounds(values, message):
    text = json.dumps({**to_dict(VAEConfig()), **values})
    with pytest.raises(MnistgenError) as error:
        from_dict(VAEConfig, json.loads(text))
    assert str(error.value) == message


@pytest.mark.parametrize("cls", [VAEConfig, GANConfig], ids=ids)
def test_cpu_kernels_choices_and_default(cls):
    assert cls().cpu_kernels == "auto"
    assert typing.get_args(typing.get_type_hints(cls)["cpu_kernels"]) == ("auto", "native", "torch", "reference")
    for choice in ("auto", "native", "torch", "reference"):
        assert config_from_args(cls, parser_for(cls).parse_args(["--cpu-kernels", choice])).cpu_kernels == choice
    help_text = {a.dest: a for a in parser_for(cls)._actions}["cpu_kernels"].help
    assert "reference (autograd through the modules' forward, no accelerator)" in help_text


# --------------------------------------------------------------------------- the mnistgen command


def command_paths(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*prefix, name))
    return paths


def test_help_works_on_every_level(capsys):
    paths = command_paths(build_parser())
    assert ("data", "verify") in paths and ("data", "fetch") in paths and ("data", "info") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: mnistgen" + "".join(f" {p}" for p in path)), path


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"mnistgen {__version__}\n"


@pytest.mark.parametrize(("argv", "expected"), [
    (["data", "info", "--download-retries", "two"], "argument --download-retries: invalid int value: 'two'"),
    (["data", "info", "--dataset", "emnist"], "argument --dataset: invalid choice: 'emnist'"),
    (["data", "verify", "--offline"], "unrecognized arguments: --offline"),
    (["data", "check"], "argument COMMAND: invalid choice: 'check'"),
    (["data"], "the following arguments are required: COMMAND"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert expected in captured.err and captured.err.startswith("mnistgen")


@pytest.mark.parametrize(("argv", "code", "expected"), [
    (["data", "info", "--download-timeout", "0"], 2, "--download-timeout must be a positive number"),
    (["data", "info", "--dataset", "kmnist", "--offline", "--data-dir", "{empty}"], 1, "kmnist: 4 of 4 files missing"),
])
def test_user_errors_are_one_line_and_flag_values_exit_2(capsys, tmp_path, argv, code, expected):
    argv = [a.replace("{empty}", str(tmp_path)) for a in argv]
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    start = "mnistgen: error: " if code == 1 else "mnistgen data info: error: "  # a usage error names its command
    assert captured.err.startswith(start) and expected in captured.err
    assert code == 1 or captured.err.rstrip().endswith("(see mnistgen data info --help)")


def test_installed_command_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("mnistgen")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mnistgen"]
    cases = ((["data", "verify", "--download-retries", "2"], 2), (["data", "info", "--download-timeout", "-3"], 2))
    for argv, code in cases:
        result = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == code and len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout == f"mnistgen {__version__}\n"


# --------------------------------------------------------------------------- seeds as replicas


@pytest.mark.parametrize("cls", [VAEConfig, GANConfig])
def test_replica_seeds_count_up_from_seed_or_are_listed(cls):
    from mnistgen.config import is_replicated, replica_config, replica_seeds

    assert replica_seeds(cls(seed=7)) == (7,) and not is_replicated(cls(seed=7))
    assert replica_seeds(cls(seed=7, replicas=3)) == (7, 8, 9) and is_replicated(cls(replicas=3))
    listed = cls(seeds="5, 3,11")
    assert replica_seeds(listed) == (5, 3, 11) and is_replicated(listed) and is_replicated(cls(seeds="5"))
    one = replica_config(cls(seed=7, replicas=3, epochs=4), 8)
    assert one == cls(seed=8, epochs=4) and not is_replicated(one)


@pytest.mark.parametrize(("changes", "message"), [
    ({"seeds": "1,x"}, "--seeds must be comma-separated whole numbers, got '1,x'"),
    ({"seeds": "1,2,1"}, "--seeds holds a seed twice: '1,2,1'"),
    ({"seeds": "1,-2"}, "--seeds: each seed must be in [0, 2**64 - 1], got -2"),
    ({"seeds": "1,2", "replicas": 2}, "give --seeds or --replicas, not both (--replicas counts up from --seed)"),
    ({"seed": 2**64 - 2, "replicas": 3}, "--seed 18446744073709551614 with --replicas 3 runs past the largest seed, "
                                         "2**64 - 1"),
])
def test_bad_seed_lists_are_refused_in_one_line(changes, message):
    with pytest.raises(MnistgenError) as error:
        validate(dataclasses.replace(VAEConfig(), **changes))
    assert str(error.value) == message
    validate(dataclasses.replace(VAEConfig(), seed=2**64 - 3, replicas=3))  # the last seed is the largest
