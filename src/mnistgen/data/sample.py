"""mnistgen's own 5,000-digit sample of real MNIST (4,000 training, 1,000 test images, balanced by digit), shipped
in ``mnistgen/assets/mnist-sample/`` as a stand-in dataset; docs/DATA.md says which images and under what license
(CC BY-SA 3.0, as MNIST's). Their MD5s (:data:`mnistgen.data.registry.SAMPLE_SPEC`) are checked on every load.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..version import __version__

SAMPLE_LICENSE = "CC BY-SA 3.0"
SAMPLE_SOURCE = (f"MNIST (Yann LeCun, Corinna Cortes, Christopher J.C. Burges; {SAMPLE_LICENSE}), "
                 f"a 5,000-image subset shipped with mnistgen {__version__}")
SPLIT_DESCRIPTION = ("train: 400 images of each digit from MNIST's training file, test: 100 of each from its test "
                     "file (t10k), evenly spaced in file order (positions floor(i * n_digit / k)); both interleaved by "
                     "digit")


def sample_folder() -> Path:
    return Path(str(resources.files("mnistgen").joinpath("assets", "mnist-sample")))
