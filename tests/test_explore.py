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

from mnistgen.config import VAEConfig
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
from mnistgen.models.gan import Generator
from mnistgen.models.vae import VAE, Decoder


def spec_decoder(hidden: int = 500, latent: int = 2) -> torch.nn.Module:
    """SPEC §2's decoder, randomly initialised."""
    torch.manual_seed(0)
    return Decoder(latent, hidden)


class ReluDecoder(Decoder):
    """SPEC's layers, but relu instead of tanh inside ``logits``: no leaf module shows the change."""

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.hidden(z)))


def explorer_data(n: int = 500, hidden: int = 500) -> ExplorerData:
    rng = np.random.default_rng(0)
    return ExplorerData(*decoder_arrays(spec_decoder(hidden), VAEConfig(hidden=hidden)),
                        means=rng.normal(size=(n, 2)).astype(np.float32),
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
    w1, b1, w2, b2 = decoder_arrays(decoder, VAEConfig())
    z = np.array([[0.3, -1.2]], np.float32)
    by_hand = 1 / (1 + np.exp(-(np.tanh(z @ w1.T + b1) @ w2.T + b2)))
    with torch.no_grad():
        np.testing.assert_allclose(by_hand, decoder(torch.from_numpy(z)).numpy(), atol=1e-6)


@pytest.mark.parametrize(("decoder", "differs"), [
    (spec_decoder(latent=3), r"decoder.hidden is Linear\(in_features=3"),
    (spec_decoder(hidden=10), r"decoder.hidden is Linear\(in_features=2, out_features=10,"),
    (Decoder(2, 500, output_dim=100), r"decoder.output is Linear\(in_features=500, out_features=100,"),
    (torch.nn.Sequential(torch.nn.Linear(2, 500), torch.nn.Tanh(), torch.nn.Linear(500, 784)), "decoder has 0, 1"),
    (ReluDecoder(), r"its output is .* away \(relative\) from the page's sigmoid\(Linear\(tanh\(Linear\(z\)\)\)\)")])
def test_decoders_the_page_cannot_run_are_refused(decoder, differs):
    with pytest.raises(MnistgenError, match=f"^the explorer cannot draw this decoder: {differs}"):
        decoder_arrays(decoder, VAEConfig())


def test_the_explorer_needs_a_2d_latent_space():
    with pytest.raises(MnistgenError, match="needs a 2-D latent space; this VAE has 3 dimensions"):
        decoder_arrays(spec_decoder(latent=3), VAEConfig(latent_dim=3))


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


def spec_generator() -> Generator:
    torch.manual_seed(1)
    return Generator(64)


def with_layer(name: str, layer: torch.nn.Module) -> Generator:
    generator = spec_generator()
    setattr(generator, name, layer)
    return generator


class SwappedGenerator(Generator):
    """SPEC's layers, but sigmoid before the last convolution: no leaf module shows the change."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.linear(z)).view(-1, 32, 7, 7)
        h = self.act2(self.conv1(self.up1(h)))
        return self.conv3(self.sigmoid(self.conv2(self.up2(h))))


def test_generator_arrays_and_corners():
    from mnistgen.explore import GAN_CORNERS, generator_arrays

    gan = generator_arrays(spec_generator(), 64)
    assert gan.linear_w.shape == (1568, 64)
    assert [w.shape for w, _ in gan.convs] == [(16, 32, 3, 3), (8, 16, 3, 3), (1, 8, 3, 3)]
    assert gan.corners.shape == (GAN_CORNERS, 64)
    assert gan.corners.min() >= -1 and gan.corners.max() <= 1 and gan.corners.std() > 0.4  # U[-1, 1]: std 0.577
    embedded = embedded_json(build_explorer(dataclasses.replace(explorer_data(), gan=gan)))["gan"]
    np.testing.assert_array_equal(floats(embedded["conv_w"][1], (8, 16, 3, 3)), gan.convs[1][0])
    assert embedded["slope"] == pytest.approx(0.2) and embedded["channels"] == [32, 16, 8, 1]
    assert "GAN: the generator" in build_explorer(dataclasses.replace(explorer_data(), gan=gan))
    assert embedded_json(build_explorer(explorer_data()))["gan"] is None


@pytest.mark.parametrize(("generator", "differs"), [
    (with_layer("up1", torch.nn.Upsample(scale_factor=2, mode="bilinear")), "generator.up1 is Upsample"),
    (with_layer("conv2", torch.nn.Conv2d(16, 8, 3, 1, 0)), "generator.conv2 is Conv2d"),
    (with_layer("act2", torch.nn.ReLU()), "generator.act2 is ReLU"),
    (torch.nn.Sequential(torch.nn.Linear(64, 1568)), "generator has 0"),
    (SwappedGenerator(), r"its output is .* away \(relative\) from the page's SPEC §3 generator")])
def test_generators_the_page_cannot_run_are_refused(generator, differs):
    from mnistgen.explore import generator_arrays

    with pytest.raises(MnistgenError, match=f"^the explorer cannot draw this generator: {differs}"):
        generator_arrays(generator, 64)


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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist_dir, mnist_raw):
    """A VAE run trained 1 epoch on the first 500 images of real MNIST's hw protocol."""
    from mnistgen.config import DataConfig
    from mnistgen.data.protocols import load_protocol
    from mnistgen.runs import RunDir
    from mnistgen.train.vae import train_vae

    run = RunDir(tmp_path_factory.mktemp("explore") / "vae")
    protocol = load_protocol("hw", mnist_raw)
    first = dataclasses.replace(protocol, train_images=protocol.train_images[:500],
                                train_labels=protocol.train_labels[:500])
    train_vae(VAEConfig(data=DataConfig(dataset="mnist", data_dir=str(mnist_dir), offline=True), epochs=1,
                        device="cpu"), run, protocol=first, show_progress=False)
    return run.path


class ReluLayerVAE(VAE):
    """SPEC's VAE with a ReLU module added to its decoder (as a replaced model class would bring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder.act = torch.nn.ReLU()


@pytest.mark.parametrize("change", ["relu in logits", "relu layer"])
def test_cli_explore_refuses_a_decoder_the_page_cannot_draw(tiny_run, tmp_path, capsys, monkeypatch, change):
    from mnistgen.cli import main

    if change == "relu in logits":
        monkeypatch.setattr(Decoder, "logits", ReluDecoder.logits)
        differs = (r"its output is \S+ away \(relative\) from the page's sigmoid\(Linear\(tanh\(Linear\(z\)\)\)\) "
                   r"at 16 points \(an activation or the order of the layers differs\)")
    else:
        monkeypatch.setattr("mnistgen.evaluate.vae.VAE", ReluLayerVAE)
        differs = r"decoder has act \(written for the spec's layers\)"
    out = tmp_path / "explorer.html"
    assert main(["explore", str(tiny_run), "--out", str(out), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert re.fullmatch(f"mnistgen: error: the explorer cannot draw this decoder: {differs}\n", captured.err)
    assert not out.exists()


def test_cli_explore_accepts_the_spec_decoder(tiny_run, tmp_path, capsys):
    from mnistgen.cli import main

    out = tmp_path / "explorer.html"
    assert main(["explore", str(tiny_run), "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == f"{out}\n" and embedded_json(out.read_text())["hidden"] == 500
