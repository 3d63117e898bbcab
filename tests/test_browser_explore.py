"""explorer.html in a real headless Chromium: the page's JavaScript decoder against the Python decoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from browser_support import browser, open_page  # noqa: F401 - browser is a fixture

from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, VAEConfig, to_dict
from mnistgen.data.protocols import load_protocol
from mnistgen.evaluate.gan import load_generator
from mnistgen.evaluate.vae import load_trained_vae
from mnistgen.models.gan import Generator
from mnistgen.runs import RunDir
from mnistgen.train.vae import train_vae

TRAIN_IMAGES = 1000
TOLERANCE = 1e-5  # float32 weights; the page accumulates in float64, torch in float32


@pytest.fixture(scope="module")
def explorer(tmp_path_factory, mnist_dir, mnist_raw):
    """(explorer.html, the Python decoder z (B, 2) -> p(x|z) (B, 784), the generator) of a VAE trained 1 epoch on
    real MNIST and an initialised GAN.

    The run is real (train_vae on the first 1,000 hw images, checkpoint on disk); the page is made by the
    command a user types, ``mnistgen explore RUN --out FILE``, and the decoder is read back from the checkpoint.
    """
    folder = tmp_path_factory.mktemp("explore")
    run = RunDir(folder / "vae")
    config = VAEConfig(data=DataConfig(dataset="mnist", data_dir=str(mnist_dir), offline=True), epochs=1,
                       device="cpu")
    protocol = load_protocol("hw", mnist_raw)
    first = dataclasses.replace(protocol, train_images=protocol.train_images[:TRAIN_IMAGES],
                                train_labels=protocol.train_labels[:TRAIN_IMAGES])
    train_vae(config, run, protocol=first, show_progress=False)
    # the GAN panel: SPEC's generator as initialised (seeded), saved in the GAN run folder's checkpoint format
    gan = RunDir(folder / "gan")
    gan.write_config(to_dict(GANConfig()), kind="gan")
    torch.manual_seed(3)
    gan.save_checkpoint({"generator": Generator(GANConfig().zdim).state_dict(), "epoch": 0})
    assert main(["explore", str(run.path), "--gan", str(gan.path), "--out", str(folder / "explorer.html"),
                 "--device", "cpu"]) == 0
    return (folder / "explorer.html", load_trained_vae(run, "cpu").model.decoder,
            load_generator(gan, torch.device("cpu"))[0])


@pytest.fixture(scope="module")
def page(browser, explorer):  # noqa: F811 - browser is the fixture imported above
    page, traffic = open_page(browser, explorer[0], viewport=(1400, 1400))  # both panels in view
    yield page, traffic
    page.context.close()


def python_decode(explorer, z) -> np.ndarray:
    with torch.no_grad():
        return explorer[1](torch.tensor(np.atleast_2d(z), dtype=torch.float32)).numpy()


def js_decode(page, z) -> np.ndarray:
    return np.array(page.evaluate("z => Array.from(window.mnistgenExplorer.decode(z))", list(map(float, z))))


def test_page_loads_with_no_request_and_no_error(page):
    page, traffic = page
    assert traffic.non_local == [] and traffic.failed == [] and traffic.console_errors == []
    assert page.evaluate("window.mnistgenExplorer.points") == 10_000  # every hw training image's mean is drawn


@pytest.mark.parametrize("z", [(0.0, 0.0), (0.5, -1.0), (2.5, 3.0), (-1.7, 0.2), (-40.0, 25.0)])
def test_javascript_decoder_equals_python_decoder(page, explorer, z):
    js = js_decode(page[0], z)
    assert js.shape == (784,)
    np.testing.assert_allclose(js, python_decode(explorer, z)[0], atol=TOLERANCE, rtol=0)


def pointer_to(page, z):
    """Move the mouse over the plane to the screen point of latent ``z``; return the z the page then shows."""
    x, y = page.evaluate("z => window.mnistgenExplorer.toCanvas(z)", list(z))
    box = page.locator("#plane-overlay").bounding_box()
    scale = box["width"] / page.evaluate("document.getElementById('plane-overlay').width")
    page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
    return np.array(page.evaluate("window.mnistgenExplorer.z"))


def plane(page) -> tuple[np.ndarray, np.ndarray, float]:
    """(low corner, high corner, span) of the latent square the page shows."""
    ranges = page.evaluate("window.mnistgenExplorer.range")
    low, high = np.array([ranges["z1"][0], ranges["z2"][0]]), np.array([ranges["z1"][1], ranges["z2"][1]])
    return low, high, float(high[0] - low[0])


def test_two_pointer_positions_show_two_different_decoded_images(page, explorer):
    page, _ = page
    low, high, span = plane(page)
    images = []
    for fraction in ((0.25, 0.75), (0.75, 0.25)):  # two points inside the plane, wherever the means lie
        target = low + np.array(fraction) * span
        shown_z = pointer_to(page, target)
        assert np.abs(shown_z - target).max() < 2 * span / 500  # within about a screen pixel
        pixels = np.array(page.evaluate("Array.from(window.mnistgenExplorer.pixels)"))
        np.testing.assert_allclose(pixels, python_decode(explorer, shown_z)[0], atol=TOLERANCE, rtol=0)
        images.append(pixels)
    assert np.abs(images[0] - images[1]).max() > 0.1


def test_the_canvas_shows_the_decoded_image(page):
    page, _ = page
    page.evaluate("window.mnistgenExplorer.setZ(0.7, -0.4)")
    expected = np.round(255 * np.array(page.evaluate("Array.from(window.mnistgenExplorer.pixels)")))
    # the 280x280 canvas: the center of each 10x10 cell, red channel (the image is gray)
    shown = np.array(page.evaluate("""() => {
        const c = document.getElementById('digit'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        const cell = c.width / 28, out = [];
        for (let r = 0; r < 28; r++) for (let q = 0; q < 28; q++)
            out.push(d.data[4 * (Math.floor((r + 0.5) * cell) * c.width + Math.floor((q + 0.5) * cell))]);
        return out; }"""))
    np.testing.assert_array_equal(shown, expected)


def test_arrow_keys_and_sliders_move_z(page, explorer):
    page, _ = page
    low, high, span = plane(page)
    centre = (low + high) / 2
    page.evaluate(f"window.mnistgenExplorer.setZ({centre[0]}, {centre[1]})")
    page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a slider
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    np.testing.assert_allclose(page.evaluate("window.mnistgenExplorer.z"), centre + [span / 100, 2 * span / 100],
                               atol=1e-9)
    target = low[0] + 0.3 * span
    page.locator("#z1").fill(str(target))
    z = page.evaluate("window.mnistgenExplorer.z")
    assert z[0] == pytest.approx(target, abs=span / 400)
    pixels = np.array(page.evaluate("Array.from(window.mnistgenExplorer.pixels)"))
    np.testing.assert_allclose(pixels, python_decode(explorer, z)[0], atol=TOLERANCE, rtol=0)
    page.evaluate(f"window.mnistgenExplorer.setZ({high[0] + 10 * span}, {low[1] - 10 * span})")  # clamped
    assert page.evaluate("window.mnistgenExplorer.z") == [high[0], low[1]]


def python_generate(explorer, z) -> np.ndarray:
    with torch.no_grad():
        return explorer[2](torch.tensor(np.atleast_2d(z), dtype=torch.float32)).reshape(-1, 784).numpy()


def test_gan_panel_generator_equals_python_generator(page, explorer):
    page, _ = page
    draws = np.random.default_rng(5).uniform(-1.0, 1.0, size=(3, 64))
    for z in [*draws, np.full(64, 1.0), np.full(64, -1.0)]:
        js = np.array(page.evaluate("z => Array.from(window.mnistgenExplorer.gan.generate(z))", z.tolist()))
        np.testing.assert_allclose(js, python_generate(explorer, z)[0], atol=TOLERANCE, rtol=0)


def test_gan_pad_pointer_shows_generator_of_the_mixed_noise(page, explorer):
    page, _ = page
    box = page.locator("#gan-pad-overlay").bounding_box()
    scale = box["width"] / page.evaluate("document.getElementById('gan-pad-overlay').width")
    images = []
    for uv in ((0.0, 0.0), (1.0, 1.0)):  # two corners: two of the fixed noise vectors
        x, y = page.evaluate("uv => window.mnistgenExplorer.gan.uvToCanvas(uv)", list(uv))
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        shown_uv = page.evaluate("window.mnistgenExplorer.gan.uv")
        np.testing.assert_allclose(shown_uv, uv, atol=0.01)
        z = np.array(page.evaluate("window.mnistgenExplorer.gan.z"))
        assert z.min() >= -1 and z.max() <= 1  # a mixture of U[-1, 1] draws stays in the cube
        pixels = np.array(page.evaluate("Array.from(window.mnistgenExplorer.gan.pixels)"))
        np.testing.assert_allclose(pixels, python_generate(explorer, z)[0], atol=TOLERANCE, rtol=0)
        images.append(pixels)
    assert np.abs(images[0] - images[1]).max() > 0.01


def box_of(page, selector) -> dict:
    return page.locator(selector).bounding_box()


@pytest.mark.parametrize("viewport", [(900, 800), (1280, 800)])
def test_the_decoded_image_stays_beside_the_plane_in_view(browser, explorer, viewport):  # noqa: F811 - fixture
    """While the pointer moves over the plane, the image it decodes is in view, to the right of the plane."""
    page, traffic = open_page(browser, explorer[0], viewport=viewport)
    try:
        plane_box, digit = box_of(page, "#plane-overlay"), box_of(page, "#digit")
        width, height = viewport
        assert digit["x"] >= plane_box["x"] + plane_box["width"]  # beside the plane ...
        assert digit["y"] < plane_box["y"] + plane_box["height"] / 2  # ... level with its top half, not below it
        assert digit["x"] + digit["width"] <= width and digit["y"] + digit["height"] <= height  # in the viewport
        assert plane_box["x"] + plane_box["width"] <= width and plane_box["width"] >= 400  # the plane still usable
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
        # the pointer still lands where it points on the (possibly scaled) plane
        low, _, span = plane(page)
        target = low + np.array([0.3, 0.6]) * span
        assert np.abs(pointer_to(page, target) - target).max() < 2 * span / 500 * 600 / plane_box["width"]
        assert traffic.console_errors == []
    finally:
        page.context.close()


def shown_values(page) -> dict:
    """What the page shows of z: the readout, each slider's value text, and the sliders' own values."""
    return page.evaluate("""() => ({
        readout: document.getElementById('readout').textContent,
        texts: ['z1-value', 'z2-value'].map(id => document.getElementById(id).textContent),
        sliders: ['z1', 'z2'].map(id => Number(document.getElementById(id).value)),
        z: window.mnistgenExplorer.z})""")


def assert_readout_agrees_with_sliders(shown):
    assert shown["readout"] == f"z = ({shown['texts'][0]}, {shown['texts'][1]})"
    assert shown["sliders"] == shown["z"]  # the sliders hold z itself, not z snapped to a step
    assert shown["texts"] == [f"{v:.3f}" if abs(v) >= 0.0005 else "0.000" for v in shown["z"]]


def test_readout_and_slider_values_agree(browser, explorer):  # noqa: F811 - fixture
    page, _ = open_page(browser, explorer[0], viewport=(900, 800))
    try:
        low, _, span = plane(page)
        for fraction in ((0.1234, 0.8766), (0.61, 0.27), (0.5, 0.5)):  # the pointer, anywhere on the plane
            pointer_to(page, low + np.array(fraction) * span)
            assert_readout_agrees_with_sliders(shown_values(page))
        page.locator("#z1").fill(str(low[0] + 0.4321 * span))  # a slider set directly
        assert_readout_agrees_with_sliders(shown_values(page))
        page.locator("#z2").focus()  # a slider moved with its keys
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        shown = shown_values(page)
        assert_readout_agrees_with_sliders(shown)
        page.locator("body").click(position={"x": 5, "y": 5})  # the page's own arrow keys
        page.keyboard.press("ArrowLeft")
        assert_readout_agrees_with_sliders(shown_values(page))
        page.evaluate("window.mnistgenExplorer.setZ(-0.0001, 0.00049)")  # no "-0.000"
        assert shown_values(page)["readout"] == "z = (0.000, 0.000)"
    finally:
        page.context.close()
