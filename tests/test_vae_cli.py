"""``mnistgen vae train|eval|plot|sample`` end to end on real MNIST, bad input (one line, non-zero exit),
and Ctrl-C during training (saves, one line, exit 130)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import native_kernels_build
from PIL import Image

from mnistgen.cli import main
from mnistgen.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_run(mnist_dir, tmp_path_factory):
    """One epoch of the reference protocol, trained through the command line."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    code = main(["vae", "train", "--out", str(folder), "--epochs", "1", "--data-dir", str(mnist_dir),
                 "--device", "cpu"])
    assert code == 0
    return RunDir(folder)


def one_line_error(capsys, code: int, expected_code: int, text: str) -> None:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert text in err, err


def test_usage_errors_name_the_help_of_the_command_that_ran(capsys):
    """A flag argparse refuses and a flag value out of its bounds read alike: the command, then its --help."""
    for argv in (["vae", "train", "--out", "x", "--epochs", "many"], ["vae", "train", "--out", "x", "--lr", "-1"]):
        assert run_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("mnistgen vae train: error: ") and err.endswith("(see mnistgen vae train --help)\n")
        assert len(err.splitlines()) == 1


@pytest.mark.parametrize("flag", ["--epoch", "--lr-sched", "--res"])
def test_a_flag_is_its_whole_name(flag, capsys, tmp_path):
    """An abbreviation (``--epoch`` for ``--epochs``) is refused in one line, as the API refuses ``epoch=``."""
    out = tmp_path / "run"
    assert run_main(["vae", "train", "--out", str(out), flag, "1"]) == 2
    one_line_error(capsys, 2, 2, f"unrecognized arguments: {flag}")
    assert not out.exists()


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors exit through SystemExit
        return exc.code


def test_train_writes_the_run_folder(trained_run, capsys):
    assert json.loads(trained_run.config.read_text())["config"]["epochs"] == 1
    (record,) = trained_run.read_metrics()
    assert record["epoch"] == 1 and record["test_elbo"] > -230
    assert trained_run.data.is_file() and trained_run.checkpoint.is_file()


def test_eval_prints_and_writes_the_estimates(trained_run, capsys):
    assert main(["vae", "eval", str(trained_run.path), "--iw", "4", "--samples", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test ELBO" in out and "K=4" in out
    result = json.loads(trained_run.eval.read_text())
    assert result["iw_samples"] == 4 and result["elbo_samples"] == 1 and result["test_images"] == 10000
    # the importance-weighted bound is above the ELBO, and both are near the last epoch's test ELBO
    assert result["test_elbo"] < result["test_iw_log_likelihood"] < result["test_elbo"] + 10
    assert abs(result["test_elbo"] - trained_run.read_metrics()[-1]["test_elbo"]) < 0.5


def test_plot_writes_five_figures(trained_run, capsys):
    assert main(["vae", "plot", str(trained_run.path), "--device", "cpu"]) == 0
    names = {"samples", "latent", "interpolation", "manifold", "curves"}
    assert {p.stem for p in trained_run.figures.glob("*.png")} == names
    for name in names:
        with Image.open(trained_run.figures / f"{name}.png") as image:
            assert image.width > 300 and image.height > 300
            assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas


@pytest.mark.parametrize("binary", [False, True])
def test_sample_saves_images_in_the_unit_interval(trained_run, tmp_path, binary):
    out = tmp_path / "samples.npy"
    argv = ["vae", "sample", str(trained_run.path), "--n", "16", "--out", str(out), "--device", "cpu"]
    assert main(argv + (["--binary"] if binary else [])) == 0
    images = np.load(out)
    assert images.shape == (16, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    if binary:
        assert set(np.unique(images).tolist()) <= {0.0, 1.0}
    else:
        assert len(np.unique(images)) > 100  # probabilities, not draws


@pytest.mark.parametrize("argv, code, text", [
    (["vae", "train", "--out", "{tmp}/a", "--epochs", "0"], 2, "--epochs must be a positive integer"),
    (["vae", "train", "--out", "{tmp}/a", "--lr-decay", "2"], 2, "--lr-decay must be in (0, 1]"),
    (["vae", "train", "--out", "{tmp}/a", "--objective", "exact"], 2, "invalid choice: 'exact'"),
    (["vae", "train", "--out", "{tmp}/a", "--batch-size", "many"], 2, "invalid int value: 'many'"),
    (["vae", "train", "--out", "{tmp}/nothing", "--resume"], 1, "not a run folder"),
    (["vae", "eval", "{tmp}/nothing"], 1, "not a run folder"),
    (["vae", "eval", "{run}", "--iw", "0"], 2, "--iw must be a positive integer"),
    (["vae", "plot", "{tmp}"], 1, "not a run folder"),
    (["vae", "sample", "{run}", "--n", "4", "--out", "{tmp}/x.txt"], 2, "must end with .npy"),
    (["vae", "sample", "{run}", "--n", "-3", "--out", "{tmp}/x.npy"], 2, "--n must be a positive integer"),
    (["vae", "train", "--out", "{run}"], 1, "already holds a run"),
    (["vae", "train", "--out", "{run}", "--resume", "--lr", "0.1"], 1, "edited config.json): --lr"),
    (["vae"], 2, "required"),
])
def test_bad_input_gives_one_line_and_a_non_zero_exit(argv, code, text, trained_run, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, run=trained_run.path) for a in argv]
    one_line_error(capsys, run_main(argv), code, text)


def test_a_broken_checkpoint_is_a_one_line_error(trained_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_bytes(trained_run.config.read_bytes())
    (copy / "checkpoint.pt").write_bytes(trained_run.checkpoint.read_bytes()[:1000])  # truncated
    one_line_error(capsys, run_main(["vae", "sample", str(copy), "--n", "2", "--out", str(tmp_path / "s.npy")]),
                   1, "not a readable checkpoint")


def test_ctrl_c_saves_and_exits_130_with_one_line(mnist_dir, tmp_path):
    run = RunDir(tmp_path / "run")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "mnistgen", "vae", "train", "--out", str(run.path), "--epochs", "100",
         "--data-dir", str(mnist_dir), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 240
        while not run.config.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # config.json is written once the model is built, just before the first step
        time.sleep(1.0)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    lines = err.strip().splitlines()
    if not native_kernels_build():  # --cpu-kernels auto says once that the C kernels are missing
        assert lines[0].startswith("mnistgen: note: the VAE trains with"), err
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("mnistgen: interrupted in epoch") and "--resume" in lines[0], err
    state = torch.load(run.checkpoint, weights_only=True)
    assert 0 <= state["epoch"] < 100 and 0 <= state["step"] < 100
    assert len(run.read_metrics()) == state["epoch"]


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_the_resume_help_names_every_setting_a_resume_may_change(kind, capsys):
    from mnistgen.config import RESUMABLE_FIELDS, GANConfig, VAEConfig

    resumable = RESUMABLE_FIELDS[{"vae": VAEConfig, "gan": GANConfig}[kind]]
    assert run_main([kind, "train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    resume_help = help_text.split("--resume continue the run", 1)[1].split("may change", 1)[0]
    for field in resumable:
        assert f"--{field.replace('_', '-')}" in resume_help, field
