#!/usr/bin/env python3
"""Make mnistgen's bundled 5,000-digit MNIST sample from the real MNIST files, byte for byte.

    python scripts/make_sample.py --mnist-dir ../shared/data/mnist --out src/mnistgen/assets/mnist-sample

Which images (the rule; also in ``mnistgen.data.sample`` and docs/DATA.md):

- train: 400 images of each digit from MNIST's training file (``train-*``), test: 100 of each digit from
  its test file (``t10k-*``); 4,000 + 1,000 in all, and a test image is a real MNIST test image.
- Within one file, the images of digit ``d`` are taken in file order, ``n_d`` of them; the sample takes those
  at positions ``floor(i * n_d / k)`` for ``i = 0 .. k-1`` (``k`` = 400 or 100): evenly spaced through the
  whole file. (MNIST's test file holds two populations of writers, its first 5,000 images from NIST's SD-3 and
  the last 5,000 from SD-1; "the first k" would take them from the first half only.)
- Both parts are interleaved by digit: the ``i``-th chosen image of digit 0, of digit 1, ..., of digit 9,
  then the ``i+1``-th of each, so that every prefix (e.g. the ``hw`` protocol's "first 10,000", here all
  4,000) is balanced.

Output: four IDX files (the format of SPEC §1: big-endian magic 0x00000803 / 0x00000801, then the dimensions,
then one byte per pixel or label), gzip-compressed deterministically (level 9, mtime 0, no file name in the
header), so that running this again gives the very same bytes: their MD5s are in
``mnistgen.data.registry.SAMPLE_SPEC`` and ``tests/test_sample.py`` checks that this script reproduces the shipped
files. (Identical .gz bytes need a zlib that deflates as stock zlib does, as CPython's bundled and system zlib
1.2/1.3 do; the content MD5s hold whatever the zlib.)

The input files may be gzipped or raw; their decompressed content must have SPEC §1's MD5s. Needs only the
standard library and NumPy.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

NUM_CLASSES = 10
PER_DIGIT = {"train": 400, "test": 100}
# (split, role) -> (MNIST file, MD5 of its decompressed content as SPEC §1 gives it, name of the sample's file)
FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb",
                          "sample-train-images-idx3-ubyte.gz"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624",
                          "sample-train-labels-idx1-ubyte.gz"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea",
                         "sample-t10k-images-idx3-ubyte.gz"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637",
                         "sample-t10k-labels-idx1-ubyte.gz"),
}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


def read_mnist(folder: Path, name: str, md5: str) -> np.ndarray:
    """One real MNIST file (``name`` or ``name.gz``) as uint8 items, its content checked against ``md5``."""
    for path in (folder / f"{name}.gz", folder / name):
        if path.is_file():
            raw = path.read_bytes()
            content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            break
    else:
        raise SystemExit(f"make_sample: {name}(.gz) not found in {folder}")
    if hashlib.md5(content).hexdigest() != md5:
        raise SystemExit(f"make_sample: {path}: content MD5 {hashlib.md5(content).hexdigest()}, expected {md5}")
    ndim = content[3]
    dims = struct.unpack(f">{ndim}I", content[4:4 + 4 * ndim])
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def choose(labels: np.ndarray, per_digit: int) -> np.ndarray:
    """Positions in the file of the chosen images (the rule in the module docstring), interleaved by digit."""
    chosen = np.empty((per_digit, NUM_CLASSES), dtype=np.int64)  # row i: the i-th chosen image of each digit
    for digit in range(NUM_CLASSES):
        positions = np.flatnonzero(labels == digit)
        chosen[:, digit] = positions[np.arange(per_digit) * len(positions) // per_digit]
    return chosen.reshape(-1)


def idx_bytes(array: np.ndarray) -> bytes:
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + np.ascontiguousarray(array, np.uint8).tobytes()


def deterministic_gzip(content: bytes) -> bytes:
    """gzip with a fixed header (no file name, mtime 0, OS byte 255) and level 9: the same bytes on every run."""
    return gzip.compress(content, compresslevel=9, mtime=0)


def build(mnist_dir: Path) -> dict[str, bytes]:
    """The sample's four files (name -> gzip bytes) made from the real MNIST files in ``mnist_dir``."""
    out = {}
    for split, per_digit in PER_DIGIT.items():
        images = read_mnist(mnist_dir, *FILES[split, "images"][:2])
        labels = read_mnist(mnist_dir, *FILES[split, "labels"][:2])
        rows = choose(labels, per_digit)
        out[FILES[split, "images"][2]] = deterministic_gzip(idx_bytes(images[rows]))
        out[FILES[split, "labels"][2]] = deterministic_gzip(idx_bytes(labels[rows]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, required=True, help="folder with the four real MNIST IDX files")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the sample's four files into")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build(args.mnist_dir).items():
        (args.out / name).write_bytes(data)
        content = gzip.decompress(data)
        print(f"{name}  {len(data):>9,} bytes  md5 {hashlib.md5(data).hexdigest()}  "
              f"content_md5 {hashlib.md5(content).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
