"""The run folder: atomic writes, safe checkpoint loading, metrics history, rank-0 writing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mnistgen import __version__
from mnistgen.errors import MnistgenError
from mnistgen.imaging import save_png, tile
from mnistgen.runs import RunDir, atomic_write, load_checkpoint, save_checkpoint, write_json


def test_atomic_write_leaves_old_file_intact_when_writer_fails(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def failing_writer(handle):
        handle.write(b"half of the new con")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing_writer)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"], "temporary file left behind"


def test_checkpoint_round_trip_is_exact_and_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "epoch": 7, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 7
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor)
    assert torch.equal(loaded["rng"], state["rng"])


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    # weights_only=True must refuse pickled code objects: a checkpoint cannot run code on load.
    import argparse

    torch.save({"x": argparse.Namespace(command="rm -rf /")}, tmp_path / "evil.pt")
    with pytest.raises(MnistgenError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04truncated zip"])
def test_corrupt_or_missing_checkpoint_is_one_line_error(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(MnistgenError, match="no checkpoint here"):
        load_checkpoint(path)
    path.write_bytes(content)
    with pytest.raises(MnistgenError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_run_dir_config_metrics_and_truncation(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"epochs": 3}, kind="vae")
    saved = json.loads(run.config.read_text())
    assert saved["kind"] == "vae" and saved["config"] == {"epochs": 3}
    assert saved["mnistgen_version"] == __version__
    assert saved["environment"]["torch"] == torch.__version__
    for epoch in (1, 2, 3):
        run.append_metrics({"epoch": epoch, "loss": float(epoch)})
    run.truncate_metrics(epochs_done=2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_json_has_no_nan(tmp_path):
    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.0]}


def test_not_a_run_folder(tmp_path):
    with pytest.raises(MnistgenError, match="not a run folder"):
        RunDir(tmp_path).read_config()


def test_tile_places_images_row_major(tmp_path):
    images = np.stack([np.full((2, 3), v, np.float32) for v in (0.1, 0.2, 0.3)])
    grid = tile(images, rows=2, cols=2, padding=1, pad_value=1.0)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
    assert np.allclose(grid[1:3, 1:4], 0.1) and np.allclose(grid[1:3, 5:8], 0.2)
    assert np.allclose(grid[4:6, 1:4], 0.3) and np.allclose(grid[4:6, 5:8], 1.0)  # empty cell
    save_png(tmp_path / "g.png", grid, scale=2)
    from PIL import Image

    picture = np.asarray(Image.open(tmp_path / "g.png"))
    assert picture.shape == (14, 18) and picture[2, 2] == round(0.1 * 255)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_read_config_as_checks_the_kind_and_rebuilds_the_dataclass(tmp_path):
    from mnistgen.config import GANConfig, VAEConfig, to_dict

    run = RunDir(tmp_path / "run")
    run.write_config(to_dict(VAEConfig(epochs=7)), kind="vae")
    assert run.read_config_as("vae", VAEConfig, "a VAE run") == VAEConfig(epochs=7)
    with pytest.raises(MnistgenError, match=r"a 'vae' run folder, not a GAN run$"):
        run.read_config_as("gan", GANConfig, "a GAN run")
