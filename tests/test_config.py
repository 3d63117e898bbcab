"""config.py's dataclass <-> flag <-> JSON mapping, and the top-level CLI's behaviour."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mnistgen import __version__, config
from mnistgen.cli import OneLineParser, build_parser, main
from mnistgen.config import DataConfig, VAEConfig, add_config_arguments, config_from_args, from_dict, to_dict
from mnistgen.errors import MnistgenError

CONFIG_CLASSES = [obj for obj in vars(config).values()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == config.__name__]


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
        assert "(default: " in action.help and len(action.help) > len("(default: )") + 5, flag
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
    (["--download-timeout", "0"], "--download-timeout must be a positive number of seconds, got 0.0"),
    (["--download-timeout", "inf"], "--download-timeout must be a positive number of seconds, got inf"),
    (["--download-retries", "-1"], "--download-retries must be 0 or more, got -1"),
])
def test_impossible_values_are_user_errors(flags, message):
    with pytest.raises(MnistgenError, match=message):
        config_from_args(VAEConfig, parser_for(VAEConfig).parse_args(flags))


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


@pytest.mark.parametrize(("argv", "expected"), [
    (["data", "info", "--download-timeout", "0"], "--download-timeout must be a positive number"),
    (["data", "info", "--dataset", "kmnist", "--offline", "--data-dir", "{empty}"], "kmnist: 4 of 4 files missing"),
])
def test_user_errors_are_one_line_and_exit_1(capsys, tmp_path, argv, expected):
    argv = [a.replace("{empty}", str(tmp_path)) for a in argv]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith("mnistgen: error: ") and expected in captured.err


def test_installed_command_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("mnistgen")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mnistgen"]
    cases = ((["data", "verify", "--download-retries", "2"], 2), (["data", "info", "--download-timeout", "-3"], 1))
    for argv, code in cases:
        result = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == code and len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout == f"mnistgen {__version__}\n"
