"""``mnistgen gan train|plot|sample`` end to end on real digits (the 4,000-image MNIST sample shipped with
the bundled sample: 15 steps per epoch), a real Ctrl-C (SIGINT) in the middle of training, and bad input."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from conftest import native_kernels_build

from mnistgen.cli import main
from mnistgen.models import gan as gan_models

TRAIN = ["gan", "train", "--dataset", "mnist-sample", "--epochs", "1", "--grid-every", "1", "--device", "cpu",
         "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("gan-cli") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    if err.startswith("mnistgen: note: "):  # --cpu-kernels auto says once where the C kernels are missing
        note, _, err = err.partition("\n")
        assert not native_kernels_build() and note.startswith("mnistgen: note: the GAN trains G with"), note
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def weights(run) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    return {**state["generator"], **{f"d.{k}": v for k, v in state["discriminator"].items()}}


def test_train_writes_the_run_folder(trained, capsys):
    assert {p.name for p in trained.iterdir()} >= {"config.json", "data.json", "metrics.jsonl", "checkpoint.pt",
                                                    "grids"}
    assert sorted(p.name for p in (trained / "grids").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    data = (trained / "data.json").read_text()
    assert '"protocol": "gan"' in data and "mnist-sample" in data


def test_ctrl_c_stops_cleanly_and_resume_matches_the_uninterrupted_run(trained, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_step, calls = gan_models.train_step, []

    def step_then_ctrl_c(*args):
        result = real_step(*args)
        calls.append(1)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends; training stops after this step
        return result

    monkeypatch.setattr(gan_models, "train_step", step_then_ctrl_c)
    assert main([*TRAIN, "--out", str(run)]) == 130
    err = one_line_error(capsys)
    assert "interrupted in epoch 1 after step 4 of 15" in err and "--resume" in err
    monkeypatch.setattr(gan_models, "train_step", real_step)
    assert main(["gan", "train", "--out", str(run), "--resume"]) == 0
    mine, reference = weights(run), weights(trained)
    assert all(torch.equal(mine[k], reference[k]) for k in reference)


def test_plot_writes_the_progress_figure(trained, capsys):
    assert main(["gan", "plot", str(trained), "--epochs", "0,1"]) == 0
    figure = trained / "figures" / "progress.png"
    assert str(figure) in capsys.readouterr().out
    from PIL import Image

    with Image.open(figure) as picture:
        assert picture.format == "PNG" and picture.width > picture.height  # two grids side by side


def test_plot_of_a_missing_epoch_lists_the_saved_ones(trained, capsys):
    assert main(["gan", "plot", str(trained), "--epochs", "0,30,70"]) == 1
    err = one_line_error(capsys)
    assert "no saved grid for epoch(s) 30, 70" in err and "grids exist for epochs 0, 1" in err


def test_sample_writes_n_images_in_unit_range(trained, tmp_path, capsys):
    out = tmp_path / "samples.npy"
    assert main(["gan", "sample", str(trained), "--n", "300", "--out", str(out), "--device", "cpu"]) == 0
    images = np.load(out)
    assert images.shape == (300, 28, 28) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.01
    again = tmp_path / "again.npy"
    assert main(["gan", "sample", str(trained), "--n", "300", "--out", str(again), "--device", "cpu"]) == 0
    assert np.array_equal(np.load(again), images)  # default seed: the run's
    other = tmp_path / "other.npy"
    assert main(["gan", "sample", str(trained), "--n", "300", "--out", str(other), "--seed", "9"]) == 0
    assert not np.array_equal(np.load(other), images)


@pytest.mark.parametrize("argv, code, message", [
    (["gan", "plot", "{run}", "--epochs", "zero"], 2, "comma-separated epoch numbers"),
    (["gan", "plot", "{tmp}/nowhere"], 1, "not a run folder"),
    (["gan", "sample", "{run}", "--n", "0", "--out", "{tmp}/x.npy"], 2, "--n must be a positive integer"),
    (["gan", "sample", "{run}", "--n", "5", "--out", "{tmp}/x.txt"], 2, "must end with .npy"),
    (["gan", "train", "--out", "{run}"], 1, "already holds a run"),
    (["gan", "train", "--out", "{tmp}/new", "--epochs", "0"], 2, "--epochs must be a positive integer"),
    (["gan", "train", "--out", "{tmp}/new", "--resume"], 1, "not a run folder"),
    (["gan", "train", "--out", "{run}", "--resume", "--lr-d", "0.1"], 1, "--lr-d"),
])
def test_bad_input_is_one_line_and_flag_values_exit_2(trained, tmp_path, capsys, argv, code, message):
    """A flag's value out of its bounds exits 2, as a flag argparse refuses; other user errors exit 1."""
    argv = [a.format(run=trained, tmp=tmp_path) for a in argv]
    assert main(argv) == code
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("argv", [["gan", "sample", "RUN", "--n", "many", "--out", "x.npy"],
                                  ["gan", "train"], ["gan", "plot"], ["gan", "fly"]])
def test_bad_usage_is_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    one_line_error(capsys)


@pytest.mark.parametrize("argv", [["gan", "--help"], ["gan", "train", "--help"], ["gan", "plot", "--help"],
                                  ["gan", "sample", "--help"]])
def test_help_works_on_every_level(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: mnistgen gan" in capsys.readouterr().out
