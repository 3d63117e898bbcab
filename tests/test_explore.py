"""explorer.html without a browser: the embedded weights and points decode back exactly; range; subsampling."""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from report_support import parse

from mnistgen.errors import MnistgenError
from mnistgen.explore import (
    MAX_POINTS,
    MIN_SPAN,
    ExplorerData,
    build_explorer,
    decoder_arrays,
    page_data,
    plane_range,
    subsample,
)


def spec_decoder(hidden: int = 500, latent: int = 2) -> torch.nn.Module:
    """SPEC §2's decoder layout, randomly initialised (the layer types are all the page relies on)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(latent, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, 784), torch.nn.Sigmoid())


def explorer_data(n: int = 500, hidden: int = 500) -> ExplorerData:
    rng = np.random.default_rng(0)
    return ExplorerData(*decoder_arrays(spec_decoder(hidden)), means=rng.normal(size=(n, 2)).astype(np.float32),
                        labels=rng.integers(0, 10, n), classes=tuple(str(d) for d in range(10)), title="t")


def embedded_json(text: str) -> dict:
    match = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def floats(text: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


def test_weights_and_points_round_trip_exactly():
    data = explorer_data(hidden=37)
    embedded = embedded_json(build_explorer(data))
    assert embedded["hidden"] == 37 and embedded["side"] == 28
    np.testing.assert_array_equal(floats(embedded["w1"], (37, 2)), data.w1)
    np.testing.assert_array_equal(floats(embedded["b1"], (37,)), data.b1)
    np.testing.assert_array_equal(floats(embedded["w2"], (784, 37)), data.w2)
    np.testing.assert_array_equal(floats(embedded["b2"], (784,)), data.b2)
    np.testing.assert_array_equal(floats(embedded["means"], (500, 2)), data.means)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(embedded["labels"]), np.uint8), data.labels)


def test_decoder_arrays_are_torch_linear_layout():
    decoder = spec_decoder()
    w1, b1, w2, b2 = decoder_arrays(decoder)
    z = np.array([[0.3, -1.2]], np.float32)
    by_hand = 1 / (1 + np.exp(-(np.tanh(z @ w1.T + b1) @ w2.T + b2)))
    with torch.no_grad():
        np.testing.assert_allclose(by_hand, decoder(torch.from_numpy(z)).numpy(), atol=1e-6)


@pytest.mark.parametrize("decoder", [spec_decoder(latent=3),
                                     torch.nn.Sequential(torch.nn.Linear(2, 10), torch.nn.Linear(10, 10),
                                                         torch.nn.Linear(10, 784)),
                                     torch.nn.Sequential(torch.nn.Linear(2, 10), torch.nn.Linear(10, 100))])
def test_decoders_the_page_cannot_run_are_refused(decoder):
    with pytest.raises(MnistgenError):
        decoder_arrays(decoder)


def test_plane_range_is_a_square_around_the_means():
    assert plane_range(np.zeros((10, 2))) == ((-3.0, 3.0), (-3.0, 3.0))  # at least the prior's +-3 sigma
    assert plane_range(np.zeros((0, 2))) == ((-MIN_SPAN / 2, MIN_SPAN / 2),) * 2
    rng = np.random.default_rng(1)
    for scale, shift in ((4.0, (0.0, 0.0)), (1.0, (2.2, -0.4)), (0.3, (40.0, 1.0))):
        means = rng.normal(scale=scale, size=(10_000, 2)) + shift
        (x0, x1), (y0, y1) = plane_range(means)
        assert x1 - x0 == y1 - y0 >= MIN_SPAN  # square, so distances look the same on both axes
        assert all(v * 2 == round(v * 2) for v in (x0, x1, y0, y1))  # multiples of 0.5
        inside = (means[:, 0] >= x0) & (means[:, 0] <= x1) & (means[:, 1] >= y0) & (means[:, 1] <= y1)
        assert inside.mean() >= 0.98
        # not much wider than needed: the central 99% of each axis with 10% padding, rounded up
        widest = max(np.quantile(means, 0.995, axis=0) - np.quantile(means, 0.005, axis=0))
        assert x1 - x0 <= max(MIN_SPAN, 1.1 * widest + 1.0)


def test_subsample_keeps_pairs_and_is_repeatable():
    means = np.arange(2 * 25_000, dtype=np.float32).reshape(-1, 2)
    labels = np.arange(25_000) % 10
    kept_means, kept_labels = subsample(means, labels)
    assert len(kept_means) == len(kept_labels) == MAX_POINTS
    np.testing.assert_array_equal((kept_means[:, 0] // 2).astype(int) % 10, kept_labels)  # rows stay paired
    np.testing.assert_array_equal(subsample(means, labels)[0], kept_means)
    few = means[:50], labels[:50]
    assert subsample(*few)[0] is few[0]


def test_labels_must_name_a_class():
    data = explorer_data()
    bad = ExplorerData(data.w1, data.b1, data.w2, data.b2, data.means, data.labels + 5, data.classes, "t")
    with pytest.raises(MnistgenError, match="labels outside"):
        page_data(bad)


def test_page_is_self_contained_and_well_formed():
    text = build_explorer(explorer_data())
    parser = parse(text)
    assert parser.errors == [] and parser.stack == []
    for tag, attrs in parser.tags:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
    assert not re.search(r"https?://|url\(|@import|fetch\(|XMLHttpRequest|import\(", text)


def test_title_is_escaped():
    data = explorer_data()
    text = build_explorer(ExplorerData(data.w1, data.b1, data.w2, data.b2, data.means, data.labels,
                                       ("<b>0</b>",) + data.classes[1:], "<script>x</script>"))
    assert "<script>x</script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text
    assert embedded_json(text)["classes"][0] == "<b>0</b>"  # the page inserts names as text, not HTML


def spec_generator(upsample_mode: str = "nearest", padding: int = 1) -> torch.nn.Module:
    """SPEC §3's generator layout as a Sequential, randomly initialised."""
    from torch import nn

    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 1568), nn.LeakyReLU(0.2), nn.Unflatten(1, (32, 7, 7)),
                         nn.Upsample(scale_factor=2, mode=upsample_mode), nn.Conv2d(32, 16, 3, 1, padding),
                         nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2, mode=upsample_mode),
                         nn.Conv2d(16, 8, 3, 1, padding), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 3, 1, padding),
                         nn.Sigmoid())


def test_generator_arrays_and_corners():
    from mnistgen.explore import GAN_CORNERS, generator_arrays

    gan = generator_arrays(spec_generator())
    assert gan.linear_w.shape == (1568, 64) and gan.slope == pytest.approx(0.2)
    assert [w.shape for w, _ in gan.convs] == [(16, 32, 3, 3), (8, 16, 3, 3), (1, 8, 3, 3)]
    assert gan.corners.shape == (GAN_CORNERS, 64)
    assert gan.corners.min() >= -1 and gan.corners.max() <= 1 and gan.corners.std() > 0.4  # U[-1, 1]: std 0.577
    embedded = embedded_json(build_explorer(dataclasses.replace(explorer_data(), gan=gan)))["gan"]
    np.testing.assert_array_equal(floats(embedded["conv_w"][1], (8, 16, 3, 3)), gan.convs[1][0])
    assert "GAN: the generator" in build_explorer(dataclasses.replace(explorer_data(), gan=gan))
    assert embedded_json(build_explorer(explorer_data()))["gan"] is None


@pytest.mark.parametrize("generator", [spec_generator(upsample_mode="bilinear"), spec_generator(padding=0),
                                       torch.nn.Sequential(torch.nn.Linear(64, 1568))])
def test_generators_the_page_cannot_run_are_refused(generator):
    from mnistgen.explore import generator_arrays

    with pytest.raises(MnistgenError, match="SPEC §3's generator only"):
        generator_arrays(generator)


def test_cli_explore_errors_are_one_line(tmp_path, capsys):
    from mnistgen.cli import main
    from mnistgen.config import GANConfig, to_dict
    from mnistgen.runs import RunDir

    assert main(["explore", str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistgen: error:") and err.count("\n") == 1 and "no config.json" in err
    gan = RunDir(tmp_path / "gan")
    gan.write_config(to_dict(GANConfig()), kind="gan")
    assert main(["explore", str(gan.path)]) == 1
    assert "explore needs a VAE run" in capsys.readouterr().err


def test_explorer_reads_the_data_folder_the_run_recorded(tmp_path, mnist_dir, mnist_raw, monkeypatch):
    """A run that found MNIST through $MNISTGEN_DATA_DIR is explored later without it: data.json says where."""
    from mnistgen.config import DataConfig, VAEConfig
    from mnistgen.data.protocols import load_protocol
    from mnistgen.evaluate.vae import check_same_data
    from mnistgen.explore import explorer_from_run
    from mnistgen.runs import RunDir, write_json
    from mnistgen.train.vae import train_vae

    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(mnist_dir))
    run = RunDir(tmp_path / "vae")
    protocol = load_protocol("hw", mnist_raw)
    first = dataclasses.replace(protocol, train_images=protocol.train_images[:500],
                                train_labels=protocol.train_labels[:500])
    train_vae(VAEConfig(data=DataConfig(offline=True), epochs=1, device="cpu"), run, protocol=first,
              show_progress=False)
    monkeypatch.delenv("MNISTGEN_DATA_DIR")
    monkeypatch.setenv("MNISTGEN_OFFLINE", "1")
    data = explorer_from_run(run.path, "cpu")
    assert data.means.shape == (10_000, 2)  # the hw protocol of real MNIST, not the 4,000-image sample
    np.testing.assert_array_equal(data.labels, mnist_raw.train_labels[:10_000])

    write_json(run.data, {"dataset": "mnist", "title": "MNIST", "sample": False})
    with pytest.raises(MnistgenError, match="could be loaded now"):
        check_same_data(run, {"dataset": "mnist", "title": "MNIST 5,000-digit sample", "sample": True})
    check_same_data(run, {"dataset": "mnist", "title": "MNIST", "sample": False})
