"""mnistgen's own 5,000-digit sample of real MNIST, shipped inside the package, as a stand-in dataset.

Four gzip-compressed IDX files in ``mnistgen/assets/mnist-sample/`` (package data: no network needed):
``sample-train-*``, 4,000 images (400 of each digit) from MNIST's training file, and ``sample-t10k-*``, 1,000 (100
of each) from its test file, so that the sample's test images are real MNIST test images.

Which images: of the ``n_d`` images of digit ``d`` in file order, those at positions ``floor(i * n_d / k)``,
``i = 0 .. k-1`` (``k`` = 400 or 100), interleaved by digit so that every prefix (the ``hw`` protocol's "first
10,000") is balanced. ``scripts/make_sample.py`` makes the four files from the real MNIST files, byte for byte;
their MD5s (:data:`mnistgen.data.registry.SAMPLE_SPEC`) are checked on every load.

Source and license: the MNIST database of handwritten digits by Yann LeCun, Corinna Cortes and Christopher J.C.
Burges (https://yann.lecun.com/exdb/mnist/), a derivative of NIST's Special Databases 1 and 3, made available
under the Creative Commons Attribution-Share Alike 3.0 license (CC BY-SA 3.0,
https://creativecommons.org/licenses/by-sa/3.0/). The sample is a subset of it, unmodified, under the same
license (``README.md`` beside the files says so too); mnistgen's code is MIT.
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
