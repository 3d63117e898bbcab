"""A reproduction folder written file by file through mnistgen's own writers (no training), for report tests.

Every value is chosen here, so a test can look for it in the page: nothing is copied from the report's output.
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from mnistgen.config import GANConfig, ReproduceConfig, VAEConfig, to_dict
from mnistgen.imaging import save_png, tile
from mnistgen.runs import RunDir, write_json

VAE_METRICS = [{"epoch": e, "train_elbo": -200.0 + 10 * e, "test_elbo": -205.0 + 10 * e, "seconds": 1.5}
               for e in range(1, 4)]
GAN_METRICS = [{"epoch": e, "d_loss": 1.2 - 0.1 * e, "g_loss": 0.8 + 0.1 * e, "d_real": 0.6, "d_fake": 0.4,
                "seconds": 2.5} for e in range(1, 3)]
VAE_EVAL = {"test_elbo": -170.5, "test_iw_log_likelihood": -160.25, "train_elbo": -150.125, "iw_samples": 1000}
CHECKSUM = "6bbc9ace898e44ae57da46a324031adb"
DATA = {"dataset": "mnist", "source": "local folder",
        "files": [{"name": "train-images-idx3-ubyte.gz", "content_md5": CHECKSUM, "bytes": 9912422}]}
REFERENCE = {"what": "10,000 training images against the 10,000 test images", "n_images": 10000,
             "frechet_distance": 0.75, "classifier_score": 9.61, "class_histogram": [1000] * 10}
GAN_SCORE = {"file": "gan.npy", "n_images": 64, "frechet_distance": 123.456, "classifier_score": 3.25,
             "class_histogram": [10, 2, 5, 7, 0, 9, 11, 3, 8, 9], "real_vs_real_reference": REFERENCE,
             "classifier": {"sha256": "ab" * 32, "test_accuracy": 0.991}}
STAGES = {"command": ["mnistgen", "reproduce", "--out", "RUN", "--quick"],
          "stages": {"vae-train": {"status": "done", "seconds": 65.0},
                     "gan-train": {"status": "done", "seconds": 3725.0},
                     "scores": {"status": "failed", "seconds": 0.5, "error": "MnistgenError: no classifier <here>"}}}


def digit_like(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28)).astype(np.float32)


def make_reproduction(root: Path, data: dict | None = None) -> Path:
    """RUN/ with vae/ and gan/ run folders, figures, grids, a scored sample set and stages.json."""
    RunDir(root).write_config(to_dict(ReproduceConfig()), kind="reproduce")
    vae = RunDir(root / "vae")
    vae.write_config(to_dict(VAEConfig()), kind="vae")
    for record in VAE_METRICS:
        vae.append_metrics(record)
    write_json(vae.eval, VAE_EVAL)
    write_json(vae.data, data if data is not None else DATA)
    save_png(vae.figures / "samples.png", tile(digit_like(1, 20), 10, 2), scale=3)
    save_png(vae.figures / "latent.png", np.random.default_rng(2).random((90, 120)))
    gan = RunDir(root / "gan")
    gan.write_config(to_dict(GANConfig()), kind="gan")
    for record in GAN_METRICS:
        gan.append_metrics(record)
    write_json(gan.data, data if data is not None else DATA)
    for epoch in (0, 1, 2):
        save_png(gan.path / "grids" / f"epoch_{epoch:03d}.png", tile(digit_like(10 + epoch, 64), 8, 8))
    save_png(gan.figures / "progress.png", np.random.default_rng(3).random((60, 180)))
    (root / "samples").mkdir()
    np.save(root / "samples" / "gan.npy", digit_like(4, 64))
    write_json(root / "samples" / "gan.score.json", GAN_SCORE)
    write_json(root / "stages.json", STAGES)
    return root


class PageParser(HTMLParser):
    """Collects the attributes of every tag and checks that elements open and close in order."""

    VOID = {"meta", "img", "br", "input", "link", "hr", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def embedded_images(text: str) -> list[bytes]:
    """The decoded bytes of every <img src="data:image/png;base64,...">."""
    sources = [attrs.get("src", "") for tag, attrs in parse(text).tags if tag == "img"]
    prefix = "data:image/png;base64,"
    assert all(s.startswith(prefix) for s in sources), [s[:40] for s in sources if not s.startswith(prefix)]
    return [base64.b64decode(s[len(prefix):]) for s in sources]


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        picture.verify()
    with Image.open(io.BytesIO(data)) as picture:
        return picture.size
