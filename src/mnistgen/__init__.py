"""mnistgen: a 2-D-latent VAE and a small convolutional GAN of handwritten digits, built to SPEC.md.

The Python API (the stable surface is ``__all__``; see docs/COMMANDS.md, "From Python")::

    run = mnistgen.train_vae("runs/vae", epochs=1)   # or mnistgen.load_run("runs/vae", device="auto")
    run = mnistgen.load_pretrained("vae-spec")       # a shipped trained model (mnistgen pretrained list)
    images = run.sample(16, seed=0)                  # (16, 28, 28) float32 in [0, 1]
    mean, logvar = run.encode(images)                # (16, 2) each
    report = mnistgen.score(images)                  # what `mnistgen score` writes

``import mnistgen`` stays light (no torch): the API is imported on first use. (The score's implementation is the
module :mod:`mnistgen.scoring`; ``mnistgen.score`` is the API's function.)
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import MnistgenError
from .version import __version__

__all__ = ["__version__", "MnistgenError", "Run", "load_run", "load_pretrained", "train_vae", "train_gan", "score"]

_API = ("Run", "load_run", "load_pretrained", "train_vae", "train_gan", "score")


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (so that ``import mnistgen`` and the CLI's start stay quick)."""
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
