"""The Python API: ``mnistgen.train_vae|train_gan|load_run|score`` and ``mnistgen.MnistgenError``.

Tiny runs are trained through the API (a VAE of 50 hidden units on real MNIST, one epoch; a GAN on the 4,000-image
sample, one epoch). What the API gives must be what the command line gives: the same config from the same
settings, the very sampled arrays for a seed, the very numbers of ``mnistgen score``, the same one-line messages.
The "From Python" code of docs/COMMANDS.md runs here as written.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mnistgen
from mnistgen.api import python_words
from mnistgen.cli import build_parser, main
from mnistgen.config import GANConfig, VAEConfig, config_from_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FROM_PYTHON_DOC = Path(__file__).resolve().parents[1] / "docs" / "COMMANDS.md"
GAN_SETTINGS = {"dataset": "mnist-sample", "epochs": 1, "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def vae_run(mnist_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "vae"
    # a Path for data_dir and an int for a float setting: what a notebook passes, taken as the flags would be
    return mnistgen.train_vae(folder, epochs=1, hidden=50, lr_decay=1, data_dir=mnist_dir, offline=True, device="cpu",
                              threads=1)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    return mnistgen.train_gan(tmp_path_factory.mktemp("api") / "gan", **GAN_SETTINGS)


def cli_error(capsys, argv: list[str]) -> str:
    """The one stderr line of a command that fails."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    return err


def sample_with_cli(tmp_path, capsys, family: str, run, n: int, *flags: str) -> np.ndarray:
    out = tmp_path / f"cli-{len(list(tmp_path.iterdir()))}.npy"
    assert main([family, "sample", str(run.path), "--n", str(n), "--out", str(out), "--device", "cpu", *flags]) == 0
    capsys.readouterr()
    return np.load(out)


# --------------------------------------------------------------------------- the surface


def test_import_is_light_and_all_names_resolve():
    code = ("import sys, mnistgen; heavy = [m for m in ('torch', 'numpy', 'argparse') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(mnistgen.__all__) == {"__version__", "MnistgenError", "Run", "load_run", "load_pretrained",
                                     "train_vae", "train_gan", "score"}
    for name in mnistgen.__all__:
        assert getattr(mnistgen, name) is not None
    for function in (mnistgen.load_run, mnistgen.load_pretrained, mnistgen.train_vae, mnistgen.train_gan,
                     mnistgen.score, mnistgen.Run.sample, mnistgen.Run.encode, mnistgen.Run.decode):
        assert "(" in (function.__doc__ or "") and "28" in function.__doc__, function  # shapes in every docstring
    from mnistgen.errors import MnistgenError
    assert mnistgen.MnistgenError is MnistgenError


def test_score_is_the_api_function():
    import mnistgen.api

    assert mnistgen.score is mnistgen.api.score and callable(mnistgen.score)


# --------------------------------------------------------------------------- a VAE run


def test_train_vae_returns_the_loaded_run_with_the_clis_config(vae_run, mnist_dir):
    run = vae_run
    assert run.kind == "vae" and isinstance(run.config, VAEConfig)
    args = build_parser().parse_args(["vae", "train", "--out", str(run.path), "--epochs", "1", "--hidden", "50",
                                      "--lr-decay", "1", "--data-dir", str(mnist_dir), "--offline", "--device", "cpu",
                                      "--threads", "1"])
    assert run.config == config_from_args(VAEConfig, args)  # the same settings as the same flags
    assert json.loads((run.path / "config.json").read_text())["config"]["lr_decay"] == 1.0
    assert [record["epoch"] for record in run.metrics] == [1] and run.metrics[0]["train_elbo"] < 0
    assert run.eval is None and run.epochs == 1 and run.device == torch.device("cpu")
    assert isinstance(run.vae, torch.nn.Module) and not run.vae.training
    assert next(run.vae.parameters()).device.type == "cpu"
    assert not hasattr(run, "generator")
    with pytest.raises(mnistgen.MnistgenError, match="a VAE run has no run.discriminator"):
        run.discriminator  # noqa: B018
    assert "vae" in repr(run)


def test_load_run_reads_eval_json_and_the_same_weights(vae_run, capsys):
    assert main(["vae", "eval", str(vae_run.path), "--iw", "2", "--samples", "1", "--device", "cpu"]) == 0
    capsys.readouterr()
    again = mnistgen.load_run(vae_run.path, device="cpu")
    assert again.eval["iw_samples"] == 2 and again.metrics == vae_run.metrics
    for mine, theirs in zip(again.vae.state_dict().values(), vae_run.vae.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    assert mnistgen.load_run(str(vae_run.path), device=torch.device("cpu")).device == torch.device("cpu")


@pytest.mark.parametrize("seed", [None, 7])
def test_vae_sample_is_the_clis_array(vae_run, tmp_path, capsys, seed):
    flags = [] if seed is None else ["--seed", str(seed)]
    expected = sample_with_cli(tmp_path, capsys, "vae", vae_run, 20, *flags)
    images = vae_run.sample(20, seed=seed)
    assert images.shape == (20, 28, 28) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert np.array_equal(images, expected)
    assert not np.array_equal(vae_run.sample(20, seed=8), images)


def test_encode_and_decode_shapes_ranges_and_input_forms(vae_run):
    from mnistgen.evaluate.vae import decode, encode_means

    images = vae_run.sample(12, seed=0)
    mean, logvar = vae_run.encode(images)
    assert mean.shape == logvar.shape == (12, 2) and mean.dtype == logvar.dtype == np.float32
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(logvar))
    assert np.array_equal(mean, encode_means(vae_run.vae, torch.from_numpy(images.reshape(12, 784))).numpy())
    # (N, 784), a torch tensor, float64: the same codes
    flat = vae_run.encode(torch.from_numpy(images.reshape(12, 784)))
    assert np.array_equal(flat[0], mean) and np.array_equal(flat[1], logvar)
    assert np.allclose(vae_run.encode(images.astype(np.float64))[0], mean, atol=1e-6)
    levels = np.round(images * 255).astype(np.uint8)
    assert np.array_equal(vae_run.encode(levels)[0], vae_run.encode(levels.astype(np.float32) / 255)[0])

    pixels = vae_run.decode(mean)
    assert pixels.shape == (12, 28, 28) and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert np.array_equal(pixels.reshape(12, 784), decode(vae_run.vae, torch.from_numpy(mean)).numpy())
    assert vae_run.decode(torch.zeros(3, 2, dtype=torch.float64)).shape == (3, 28, 28)


@pytest.mark.parametrize(("method", "value", "message"), [
    ("encode", np.zeros((2, 28)), "images: shape (2, 28), expected (N, 28, 28) or (N, 784)"),
    ("encode", np.zeros((0, 784)), "images: shape (0, 784)"),
    ("encode", np.full((2, 784), 1.5), "images: values outside [0, 1] (min 1.5, max 1.5)"),
    ("encode", np.full((2, 784), np.nan), "images: 1568 NaN value(s)"),
    ("encode", np.zeros((2, 784), np.int64), "images: dtype int64, expected floats in [0, 1] (or uint8 0..255)"),
    ("decode", np.zeros((3, 5)), "z: shape (3, 5), expected (N, 2) with N >= 1 (this run's latent dimension is 2)"),
    ("decode", np.array([[0.0, np.inf]]), "z: 1 infinite value(s)"),
    ("sample", 0, "n must be a positive integer, got 0"),
    ("sample", 2.5, "n must be a positive integer, got 2.5"),
])
def test_bad_arrays_and_counts_are_one_line_errors(vae_run, method, value, message):
    with pytest.raises(mnistgen.MnistgenError) as error:
        getattr(vae_run, method)(value)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_bad_sample_seed_is_the_clis_message(vae_run, tmp_path, capsys):
    err = cli_error(capsys, ["vae", "sample", str(vae_run.path), "--n", "2", "--out", str(tmp_path / "x.npy"),
                             "--seed", "-1"])
    with pytest.raises(mnistgen.MnistgenError) as error:
        vae_run.sample(2, seed=-1)
    assert str(error.value) in python_words(err) and "--" not in str(error.value)


# --------------------------------------------------------------------------- settings


def test_an_unknown_setting_is_refused_naming_it_and_nothing_is_written(tmp_path):
    with pytest.raises(mnistgen.MnistgenError) as error:
        mnistgen.train_vae(tmp_path / "run", epoch=3)
    assert str(error.value) == "train_vae: unknown setting 'epoch' (did you mean 'epochs'?)"
    with pytest.raises(mnistgen.MnistgenError) as error:
        mnistgen.train_gan(tmp_path / "run", colour="red")
    assert str(error.value).startswith("train_gan: unknown setting 'colour' (the settings are: dataset, data_dir, ")
    assert "zdim" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(mnistgen.MnistgenError, match="score: unknown setting 'dataset'"):
        mnistgen.score(np.zeros((2, 28, 28), np.float32), dataset="mnist")  # as `mnistgen score`: no --dataset
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("family", "setting", "flag"), [
    ("vae", {"epochs": 0}, ["--epochs", "0"]),
    ("vae", {"lr": 0}, ["--lr", "0"]),
    ("vae", {"lr_schedule": "cosine", "lr_min": 0.01}, ["--lr-schedule", "cosine", "--lr-min", "0.01"]),
    ("vae", {"seed": -1}, ["--seed", "-1"]),
    ("vae", {"download_timeout": 0.0}, ["--download-timeout", "0"]),
    ("gan", {"zdim": -3}, ["--zdim", "-3"]),
    ("gan", {"lr_d": 0.0}, ["--lr-d", "0"]),
])
def test_a_bad_value_is_the_clis_one_line_message(tmp_path, capsys, family, setting, flag):
    err = cli_error(capsys, [family, "train", "--out", str(tmp_path / "cli"), *flag])
    train = mnistgen.train_vae if family == "vae" else mnistgen.train_gan
    with pytest.raises(mnistgen.MnistgenError) as error:
        train(tmp_path / "api", **setting)
    assert str(error.value) in python_words(err) and "--" not in str(error.value)  # the keyword, not the flag
    assert str(error.value).startswith(list(setting)[-1])  # the setting out of bounds, by its keyword
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize(("setting", "message"), [
    ({"dataset": "cifar"}, "dataset must be one of mnist, fashion-mnist, kmnist, mnist-sample, got 'cifar'"),
    ({"offline": "yes"}, "offline must be true or false, got 'yes'"),
    ({"epochs": "3"}, "epochs must be a positive integer, got '3'"),
    ({"data_dir": 3}, "data_dir must be text, got 3"),
])
def test_values_no_flag_could_hold_are_refused_in_one_line(tmp_path, setting, message):
    with pytest.raises(mnistgen.MnistgenError) as error:
        mnistgen.train_vae(tmp_path / "run", **setting)
    assert str(error.value) == message


def test_resume_takes_the_stored_settings_and_refuses_changed_ones(vae_run, tmp_path, mnist_dir):
    folder = tmp_path / "copy"
    shutil.copytree(vae_run.path, folder)
    with pytest.raises(mnistgen.MnistgenError, match=r"resume=True must keep the settings .*: hidden \(hidden was"):
        mnistgen.train_vae(folder, resume=True, hidden=60)
    run = mnistgen.train_vae(folder, resume=True, epochs=2)  # the stored data_dir, hidden, lr, device, threads
    assert [record["epoch"] for record in run.metrics] == [1, 2]
    assert run.config == vae_run.config.__class__(**{**vae_run.config.__dict__, "epochs": 2})


def test_a_call_run_again_gives_its_finished_run_and_refuses_other_settings(vae_run, tmp_path, capsys):
    """A notebook's cell run again: the same settings give the finished run back (with a note, nothing trained);
    another lr is refused naming it; an unfinished run of the same settings names resume=True."""
    folder = tmp_path / "copy"
    shutil.copytree(vae_run.path, folder)
    config = vae_run.config  # every setting the run was trained with, as keywords
    settings = {**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "data"},
                **dataclasses.asdict(config.data)}
    before = (folder / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    again = mnistgen.train_vae(folder, **settings)
    assert "holds this run, finished: it is returned as it is" in capsys.readouterr().err
    assert again.epochs == vae_run.epochs and (folder / "checkpoint.pt").read_bytes() == before
    with pytest.raises(mnistgen.MnistgenError) as error:
        mnistgen.train_vae(folder, **{**settings, "lr": 2e-3})
    assert "with other settings (lr: 0.001 there, 0.002 here)" in str(error.value) and "--" not in str(error.value)
    with pytest.raises(mnistgen.MnistgenError, match=r"other settings \(epochs: 1 there, 2 here\) \(resume=True"):
        mnistgen.train_vae(folder, **{**settings, "epochs": 2})
    assert (folder / "checkpoint.pt").read_bytes() == before


def test_the_api_speaks_in_keyword_arguments():
    assert python_words("add --resume to continue it, or choose another --out") == \
        "add resume=True to continue it, or choose another out"
    assert python_words("--lr-min must be <= --lr (0.001)") == "lr_min must be <= lr (0.001)"
    assert python_words("--no-offline") == "offline=False"
    assert python_words("saved RUN/checkpoint.pt; continue with: mnistgen gan train --out /r/x --resume") == \
        "saved RUN/checkpoint.pt; continue with: mnistgen.train_gan('/r/x', resume=True)"


def test_none_turns_a_recipes_optional_setting_off_as_the_flags_off_does(tmp_path):
    """train_gan(recipe="improved", lookahead_steps=None) is --recipe improved --lookahead-steps off; None for a
    setting that cannot be None is "not given" (its default, or the recipe's value)."""
    flags = ["--recipe", "improved", "--lookahead-steps", "off", "--r1-gamma", "off"]
    expected = config_from_args(GANConfig, build_parser().parse_args(["gan", "train", "--out", "x", *flags]))
    settings = {"recipe": "improved", "lookahead_steps": None, "r1_gamma": None, "lr_d": None, "seeds": None}
    config = mnistgen.config.config_from_settings(GANConfig, settings, None, "train_gan")
    assert config == expected and (config.lookahead_steps, config.r1_gamma) == (None, None)
    assert config.lr_d == mnistgen.config.GAN_RECIPES["improved"]["lr_d"] and config.ema_decay is not None


# --------------------------------------------------------------------------- a GAN run


def test_train_gan_returns_the_loaded_run(gan_run):
    run = gan_run
    assert run.kind == "gan" and isinstance(run.config, GANConfig) and run.config.data.dataset == "mnist-sample"
    assert run.config == GANConfig(**{**GANConfig().__dict__, "epochs": 1, "device": "cpu", "threads": 1,
                                      "data": run.config.data.__class__(dataset="mnist-sample")})
    assert [record["epoch"] for record in run.metrics] == [1] and "d_loss" in run.metrics[0]
    assert run.eval is None and run.epochs == 1
    assert sum(p.numel() for p in run.generator.parameters()) == 107_777
    assert sum(p.numel() for p in run.discriminator.parameters()) == 593
    assert not run.generator.training and not run.discriminator.training
    assert not hasattr(run, "vae")
    with pytest.raises(mnistgen.MnistgenError, match="a GAN run has no run.vae"):
        run.vae  # noqa: B018
    for method, argument in (("encode", np.zeros((2, 784))), ("decode", np.zeros((2, 64)))):
        with pytest.raises(mnistgen.MnistgenError, match=f"{method} needs a VAE run, this is a GAN run"):
            getattr(run, method)(argument)


@pytest.mark.parametrize("seed", [None, 9])
def test_gan_sample_is_the_clis_array(gan_run, tmp_path, capsys, seed):
    flags = [] if seed is None else ["--seed", str(seed)]
    expected = sample_with_cli(tmp_path, capsys, "gan", gan_run, 30, *flags)
    images = gan_run.sample(30, seed=seed)
    assert images.shape == (30, 28, 28) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert np.array_equal(images, expected)


def test_ctrl_c_propagates_and_resume_ends_where_the_uninterrupted_run_does(gan_run, tmp_path, monkeypatch):
    from mnistgen.errors import TrainingInterrupted
    from mnistgen.models import gan as train

    real_step, calls = train.train_step, []

    def step_then_ctrl_c(*args):
        result = real_step(*args)
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C (or a notebook's interrupt) sends
        return result

    monkeypatch.setattr(train, "train_step", step_then_ctrl_c)
    with pytest.raises(TrainingInterrupted, match="interrupted in epoch 1 after step 3") as error:
        mnistgen.train_gan(tmp_path / "run", **GAN_SETTINGS)
    assert isinstance(error.value, KeyboardInterrupt)
    assert str(error.value).endswith(f"continue with: mnistgen.train_gan({str(tmp_path / 'run')!r}, resume=True)")
    monkeypatch.setattr(train, "train_step", real_step)
    run = mnistgen.train_gan(tmp_path / "run", resume=True)
    for name in ("generator", "discriminator"):
        mine, reference = getattr(run, name).state_dict(), getattr(gan_run, name).state_dict()
        assert all(torch.equal(mine[key], reference[key]) for key in reference)


# --------------------------------------------------------------------------- load_run's refusals


def test_load_run_refuses_what_is_not_a_run_in_one_line(vae_run, tmp_path, capsys):
    from mnistgen.runs import RunDir

    with pytest.raises(mnistgen.MnistgenError, match="not a run folder \\(no config.json\\)"):
        mnistgen.load_run(tmp_path)
    RunDir(tmp_path / "repro").write_config({}, kind="reproduce")
    with pytest.raises(mnistgen.MnistgenError, match="a reproduction folder; load one of its runs: .*vae or .*gan"):
        mnistgen.load_run(tmp_path / "repro")
    err = cli_error(capsys, ["vae", "sample", str(vae_run.path), "--n", "2", "--out", str(tmp_path / "x.npy"),
                             "--device", "gpu"])
    with pytest.raises(mnistgen.MnistgenError) as error:
        mnistgen.load_run(vae_run.path, device="gpu")
    assert str(error.value) == "device gpu: unknown device (choose auto, cpu, cuda or mps)" and "'gpu'" in err


# --------------------------------------------------------------------------- the score


def test_score_is_the_numbers_mnistgen_score_writes(gan_run, mnist_dir, tmp_path, capsys):
    images = gan_run.sample(200, seed=1)
    path = tmp_path / "samples.npy"
    np.save(path, images)
    assert main(["score", str(path), "--data-dir", str(mnist_dir), "--offline", "--device", "cpu"]) == 0
    capsys.readouterr()
    written = json.loads((tmp_path / "samples.score.json").read_text())
    report = mnistgen.score(images, data_dir=mnist_dir, offline=True, device="cpu")
    assert report["n_images"] == 200 and len(report["class_histogram"]) == 10
    for numbers in (report, report["real_vs_real_reference"]):  # the class balance beside the real-vs-real reference
        shares = np.array(numbers["class_histogram"]) / numbers["n_images"]
        assert numbers["class_tv_distance"] == pytest.approx(np.abs(shares - 0.1).sum() / 2, abs=1e-12)
        assert numbers["min_class_share"] == pytest.approx(shares.min(), abs=1e-12)
    assert report["real_vs_real_reference"]["class_tv_distance"] < 0.05  # real digits: near uniform
    assert json.loads(json.dumps(report)) == {key: value for key, value in written.items() if key != "file"}
    # a torch tensor, and uint8 levels (read as level / 255, as the command reads them)
    assert mnistgen.score(torch.from_numpy(images), data_dir=mnist_dir, device="cpu") == report
    levels = np.round(images * 255).astype(np.uint8)
    assert mnistgen.score(levels, data_dir=mnist_dir, device="cpu")["frechet_distance"] == mnistgen.score(
        levels.astype(np.float32) / 255.0, data_dir=mnist_dir, device="cpu")["frechet_distance"]
    with pytest.raises(mnistgen.MnistgenError, match=r"^images: 1 image\(s\), need at least 2 for a covariance$"):
        mnistgen.score(images[:1], data_dir=mnist_dir)


# --------------------------------------------------------------------------- the From Python code of docs/COMMANDS.md


def readme_python_blocks() -> list[str]:
    section = FROM_PYTHON_DOC.read_text().split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_code_runs_as_written(mnist_dir, tmp_path, monkeypatch, capsys):
    blocks = readme_python_blocks()
    assert blocks, "docs/COMMANDS.md has no python block in its From Python section"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(mnist_dir))  # the score's full MNIST (the training uses the sample)
    for block in blocks:
        exec(compile(block, "docs/COMMANDS.md (From Python)", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "train_vae: unknown setting 'epoch' (did you mean 'epochs'?)" in out
    assert (tmp_path / "runs" / "vae-notebook" / "checkpoint.pt").is_file()
