"""``explorer.html``: the VAE's 2-D latent plane in one self-contained page, the decoder run by the page's
JavaScript (``assets/explorer.js``) from its weights embedded as base64 float32: no server, no network.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .accelerate import PROBE_SEED, PROBE_TOLERANCE, layout_mismatch, on_meta_device, probing, relative_difference
from .accelerate.gan import spec_generator_layers
from .accelerate.vae import spec_layers
from .config import VAEConfig
from .data.protocols import binarize_batch
from .data.registry import DATASETS
from .errors import MnistgenError
from .evaluate.gan import load_generator
from .evaluate.vae import encode_means, load_run_protocol, load_trained_vae
from .files import atomic_write
from .models.gan import GENERATOR_START, LEAKY_SLOPE
from .runs import RunDir

CONTENT_SECURITY_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
IMAGE_SIDE = 28
PLANE_SIZE = 600  # canvas pixels of the latent plane (square)
PLANE_MARGIN = 40  # canvas pixels left around the plane for the axes' labels
DIGIT_SIZE = 280  # canvas pixels of the decoded image: 10 screen pixels per image pixel
MAX_POINTS = 10_000  # more encoded means than this are subsampled (fixed seed) to keep the file small
SUBSAMPLE_SEED = 0
MIN_SPAN = 6.0  # the plane is at least 6 wide: +-3 standard deviations of the prior
RANGE_QUANTILE = 0.99  # ... and holds the central 99% of the means on each axis
RANGE_PADDING = 1.1  # ... with 5% of room on each side
# matplotlib's tab10, the palette of the VAE's latent figure: the same class has the same color
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass(frozen=True)
class ExplorerData:
    """What the page needs: the decoder's weights (torch's Linear layout) and the encoded training means."""

    w1: np.ndarray  # (H, 2) weight of Linear(2, H)
    b1: np.ndarray  # (H,)
    w2: np.ndarray  # (784, H) weight of Linear(H, 784)
    b2: np.ndarray  # (784,)
    means: np.ndarray  # (N, 2) encoder means mu(x) of the training images
    labels: np.ndarray  # (N,) int class of each
    classes: tuple[str, ...]  # class names, index = label
    title: str
    gan: GeneratorWeights | None = None  # the optional second panel


GAN_CORNERS = 4  # the GAN panel morphs between this many noise vectors (the corners of its square)
GAN_CORNER_SEED = 0
GAN_TILES = 8  # the GAN pad's background: G(z) on an 8 x 8 grid of mixtures
GAN_PAD_SIZE = 400  # canvas pixels of that pad (square)
PROBE_POINTS = 16  # inputs at which a network is compared with the page's formula


@dataclass(frozen=True)
class GeneratorWeights:
    """SPEC §3's generator as arrays (torch layouts): Linear(zdim, 1568), then three 3x3 convolutions."""

    linear_w: np.ndarray  # (1568, zdim)
    linear_b: np.ndarray  # (1568,)
    convs: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight, bias): (16, 32, 3, 3), (8, 16, 3, 3), (1, 8, 3, 3)
    corners: np.ndarray  # (GAN_CORNERS, zdim) noise vectors z ~ U[-1, 1]^zdim


def _arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.detach().cpu().to(torch.float32).numpy().copy() for t in tensors]


def _check_drawable(module: torch.nn.Module, build: Callable[[], dict[str, torch.nn.Module]], what: str,
                    inputs: torch.Tensor, page: Callable[[torch.Tensor], torch.Tensor], formula: str) -> None:
    """Refuse (one line) a network the page would draw wrongly: leaf modules other than ``build()``'s, or an output
    at ``inputs`` beyond float32 rounding of ``page(inputs)`` (the page's ``formula`` in torch on the CPU)."""
    reason = layout_mismatch(module, on_meta_device(build), what)
    if reason is None:
        with probing(module) as (copy,), torch.no_grad():
            output = copy(inputs.to(next(module.parameters()).device)).float().cpu()
        difference = relative_difference(output, page(inputs))
        if not difference <= PROBE_TOLERANCE:
            reason = (f"its output is {difference:.2g} away (relative) from the page's {formula} at {len(inputs)} "
                      "points (an activation or the order of the layers differs)")
    if reason is not None:
        raise MnistgenError(f"the explorer cannot draw this {what}: {reason}")


def decoder_arrays(decoder: torch.nn.Module, config: VAEConfig) -> list[np.ndarray]:
    """SPEC §2's decoder with ``config``'s widths as float32 arrays: w1 (H, 2), b1, w2 (784, H), b2; the page computes
    p(x|z) = sigmoid(w2 tanh(w1 z + b1) + b2) and nothing else, so another decoder is refused."""
    if config.latent_dim != 2:
        raise MnistgenError(f"the explorer needs a 2-D latent space; this VAE has {config.latent_dim} dimensions")

    def layers() -> dict[str, torch.nn.Module]:
        return {name.removeprefix("decoder."): layer for name, layer in spec_layers(config).items()
                if name.startswith("decoder.")}

    def page(z: torch.Tensor) -> torch.Tensor:
        hidden, output = decoder.hidden, decoder.output
        return torch.sigmoid(F.linear(torch.tanh(F.linear(z, hidden.weight.float().cpu(), hidden.bias.float().cpu())),
                                      output.weight.float().cpu(), output.bias.float().cpu()))

    z = 3.0 * torch.randn(PROBE_POINTS, 2, generator=torch.Generator().manual_seed(PROBE_SEED))  # the prior's +-3 sd
    _check_drawable(decoder, layers, "decoder", z, page, "sigmoid(Linear(tanh(Linear(z))))")
    return _arrays(decoder.hidden.weight, decoder.hidden.bias, decoder.output.weight, decoder.output.bias)


def generator_arrays(generator: torch.nn.Module, zdim: int) -> GeneratorWeights:
    """SPEC §3's generator as arrays, with GAN_CORNERS noise vectors; another generator (not ``page``) is refused."""
    def page(z: torch.Tensor) -> torch.Tensor:
        convs = [(conv.weight.float().cpu(), conv.bias.float().cpu())
                 for conv in (generator.conv1, generator.conv2, generator.conv3)]
        h = F.linear(z, generator.linear.weight.float().cpu(), generator.linear.bias.float().cpu())
        h = F.leaky_relu(h, LEAKY_SLOPE).view(-1, *GENERATOR_START)
        for i, (weight, bias) in enumerate(convs):
            h = F.conv2d(h if i == 2 else F.interpolate(h, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)
            h = torch.sigmoid(h) if i == 2 else F.leaky_relu(h, LEAKY_SLOPE)
        return h

    z = torch.rand(PROBE_POINTS, zdim, generator=torch.Generator().manual_seed(PROBE_SEED)) * 2 - 1
    _check_drawable(generator, lambda: spec_generator_layers(zdim), "generator", z, page, "SPEC §3 generator")
    corners = np.random.default_rng(GAN_CORNER_SEED).uniform(-1.0, 1.0, size=(GAN_CORNERS, zdim)).astype(np.float32)
    convs = [_arrays(conv.weight, conv.bias) for conv in (generator.conv1, generator.conv2, generator.conv3)]
    return GeneratorWeights(*_arrays(generator.linear.weight, generator.linear.bias), tuple(map(tuple, convs)), corners)


def plane_range(means: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """The square of the latent plane the page shows, ((z1 low, z1 high), (z2 low, z2 high)): see the constants."""
    if len(means) == 0:
        return (-MIN_SPAN / 2, MIN_SPAN / 2), (-MIN_SPAN / 2, MIN_SPAN / 2)
    tail = (1.0 - RANGE_QUANTILE) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)  # (2,) each
    span = max(float((high - low).max()) * RANGE_PADDING, MIN_SPAN)
    half = float(np.ceil(span)) / 2.0  # a multiple of 0.5
    centres = np.round(low + high) / 2.0  # multiples of 0.5, within 0.25 of the data's centre
    return tuple((float(c - half), float(c + half)) for c in centres)


def subsample(means: np.ndarray, labels: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` points, drawn without replacement with a fixed seed (all of them if fewer)."""
    if len(means) <= limit:
        return means, labels
    keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(len(means), size=limit, replace=False))
    return means[keep], labels[keep]


def base64_array(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def page_data(data: ExplorerData) -> dict:
    means, labels = subsample(np.asarray(data.means, np.float32), np.asarray(data.labels))
    if labels.size and (labels.min() < 0 or labels.max() >= len(data.classes)):
        raise MnistgenError(f"labels outside 0..{len(data.classes) - 1}")
    return {"latent_dim": 2, "hidden": int(data.w1.shape[0]), "side": IMAGE_SIDE,
            **{name: base64_array(getattr(data, name), "<f4") for name in ("w1", "b1", "w2", "b2")},
            "means": base64_array(means, "<f4"), "labels": base64_array(labels, "u1"), "classes": list(data.classes),
            "colors": [CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(data.classes))],
            "range": [list(axis) for axis in plane_range(means)], "margin": PLANE_MARGIN,
            "gan": None if data.gan is None else gan_page_data(data.gan)}


def gan_page_data(gan: GeneratorWeights) -> dict:
    return {"zdim": int(gan.linear_w.shape[1]),
            "channels": [GENERATOR_START[0]] + [int(w.shape[0]) for w, _ in gan.convs],  # 32, 16, 8, 1
            "start": GENERATOR_START[1], "slope": LEAKY_SLOPE,
            **{name: base64_array(getattr(gan, name), "<f4") for name in ("linear_w", "linear_b", "corners")},
            "conv_w": [base64_array(w, "<f4") for w, _ in gan.convs],
            "conv_b": [base64_array(b, "<f4") for _, b in gan.convs], "tiles": GAN_TILES}


NARROW = 640  # CSS pixels: below this viewport width the image column wraps below the plane; above it, the
# plane shrinks (down to what is left beside the image column) so the image stays beside it while hovering


def build_explorer(data: ExplorerData) -> str:
    """The whole page as one HTML string: ``assets/explorer-page.html`` with the style, data and script inlined."""
    def asset(name: str, joined: bool = False) -> str:  # joined: the template's lines as one
        text = resources.files("mnistgen").joinpath("assets", name).read_text(encoding="utf-8")
        return "".join(text.splitlines()) if joined else text

    style = asset("explorer.css")
    for name, size in (("PLANE", PLANE_SIZE), ("DIGIT", DIGIT_SIZE), ("PAD", GAN_PAD_SIZE), ("NARROW", NARROW)):
        style = style.replace(f"{name}px", f"{size}px")
    # JSON inside <script>: "</" must not end the element early
    payload = json.dumps(page_data(data), separators=(",", ":")).replace("</", "<\\/")
    gan = "" if data.gan is None else asset("explorer-gan.html", True).format(pad=GAN_PAD_SIZE, digit=DIGIT_SIZE)
    return asset("explorer-page.html", True).format(
        csp=CONTENT_SECURITY_POLICY, title=html.escape(data.title), style=style, plane=PLANE_SIZE, digit=DIGIT_SIZE,
        gan=gan, payload=payload, script=asset("explorer.js")) + "\n"


def write_explorer(data: ExplorerData, out: str | Path) -> Path:
    path, text = Path(out).expanduser().resolve(), build_explorer(data)
    atomic_write(path, lambda h: h.write(text), mode="w")
    return path


def explorer_from_pretrained(device: str = "auto", gan_folder: str | Path | None = None) -> ExplorerData:
    """The shipped VAE and GAN of :data:`mnistgen.pretrained.EXPLORER` (another GAN from ``gan_folder``), with the
    encoder means stored beside the VAE: no data needed."""
    from .pretrained import EXPLORER, cached_run, stored

    vae, gan = EXPLORER
    means = stored(vae)["explorer"]
    return explorer_from_run(cached_run(vae), device, gan_folder or cached_run(gan),
                             (means["means"].float().numpy(), means["labels"].numpy()))


def explorer_from_run(folder: str | Path, device: str = "auto", gan_folder: str | Path | None = None,
                      points: tuple[np.ndarray, np.ndarray] | None = None) -> ExplorerData:
    """The VAE of a run folder (or a reproduction's vae/) and the encoder means of its training images, or ``points``
    (means, labels); the GAN panel's from ``gan_folder``, or the reproduction's gan/."""
    top, run = RunDir(folder), RunDir(Path(folder) / "vae")
    if not run.config.is_file():  # not a reproduction: the VAE run folder itself
        run = top
        run.read_config_as("vae", VAEConfig,
                           "a VAE run (explore needs a VAE run, or a reproduction folder holding one)")
    trained = load_trained_vae(run, device)
    config = trained.config
    decoder = decoder_arrays(trained.model.decoder, config)  # refused before the work, as is a generator
    gan_run = RunDir(gan_folder) if gan_folder is not None else RunDir(top.path / "gan")
    gan = None
    if gan_folder is not None or gan_run.checkpoint.is_file():
        generator, gan_config = load_generator(gan_run, torch.device("cpu"))
        gan = generator_arrays(generator, gan_config.zdim)
    if points is None:
        protocol = load_run_protocol(run, config)
        images = protocol.train_images
        if protocol.dynamic_binarization:
            images = binarize_batch(images, torch.Generator().manual_seed(config.seed))
        points = encode_means(trained.model, images.to(trained.device)).cpu().numpy(), protocol.train_labels.numpy()
    dataset = config.data.dataset
    classes = DATASETS[dataset].classes if dataset in DATASETS else tuple(str(d) for d in range(10))
    title = (f"mnistgen latent explorer: the VAE of {top.path.name} ({dataset}, {config.protocol} protocol, "
             f"{trained.epochs} epoch(s))")
    return ExplorerData(*decoder, means=points[0], labels=points[1], classes=tuple(classes), title=title, gan=gan)
