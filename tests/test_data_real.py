"""Real MNIST (from $MNISTGEN_DATA_DIR or ../shared/data/mnist) against the facts of SPEC §1."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from mnistgen.config import DataConfig
from mnistgen.data import integrity, sources
from mnistgen.data.cache import VerdictStore
from mnistgen.data.registry import DATASETS

# SPEC §1, copied from the specification (not from the code).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CONTENT_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


def test_shapes_and_types(mnist_raw):
    assert mnist_raw.train_images.shape == (60000, 28, 28) and mnist_raw.train_images.dtype == np.uint8
    assert mnist_raw.test_images.shape == (10000, 28, 28) and mnist_raw.test_images.dtype == np.uint8
    assert mnist_raw.train_labels.dtype == np.int64 and mnist_raw.test_labels.shape == (10000,)


def test_label_counts(mnist_raw):
    assert np.bincount(mnist_raw.train_labels).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist_raw.test_labels).tolist() == TEST_COUNTS


def test_mean_and_std_pixel(mnist_raw):
    # exact integer sums of the 8-bit values, then scaled by 255 (SPEC §1)
    count = mnist_raw.train_images.size
    total = int(mnist_raw.train_images.sum(dtype=np.uint64))
    squares = int((mnist_raw.train_images.astype(np.uint32) ** 2).sum(dtype=np.uint64))
    mean = total / count / 255.0
    std = (squares / count / 255.0**2 - mean**2) ** 0.5
    assert mean == pytest.approx(0.1307, abs=5e-5)
    assert std == pytest.approx(0.3081, abs=5e-5)


def test_content_md5s_match_the_spec(mnist_dir, mnist_raw):
    for name, md5 in CONTENT_MD5.items():
        with gzip.open(mnist_dir / name) as handle:  # independent of the package's reader
            assert hashlib.md5(handle.read()).hexdigest() == md5
    assert {f["name"]: f["content_md5"] for f in mnist_raw.provenance["files"]} == CONTENT_MD5
    assert {f.name: f.content_md5 for f in DATASETS["mnist"].files} == CONTENT_MD5


def test_provenance_lists_folder_and_files(mnist_dir, mnist_raw):
    prov = mnist_raw.provenance
    assert prov["dataset"] == "mnist" and prov["sample"] is False
    assert prov["folder"] == str(mnist_dir.resolve()) and prov["located_by"] == "--data-dir"
    for entry in prov["files"]:
        path = mnist_dir / entry["name"]
        assert entry["md5"] == hashlib.md5(path.read_bytes()).hexdigest() and entry["size"] == path.stat().st_size


def test_loading_again_hashes_nothing(mnist_dir, mnist_raw, monkeypatch):
    """The session fixture verified the files; a second load must reuse that verdict."""
    def no_hashing(*args):
        raise AssertionError("hashed again")

    monkeypatch.setattr(integrity, "md5_hex", no_hashing)
    again = sources.load_raw(DataConfig(data_dir=str(mnist_dir), offline=True))
    np.testing.assert_array_equal(again.test_labels, mnist_raw.test_labels)


def test_verify_reports_every_file_ok(mnist_dir):
    folder, reports = sources.verify_files(DataConfig(data_dir=str(mnist_dir)))
    assert folder.path == mnist_dir.resolve()
    assert [r.line() for r in reports] == [f"OK {name} {md5}" for name, md5 in CONTENT_MD5.items()]


def test_environment_variable_points_at_the_files(mnist_dir, monkeypatch):
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(mnist_dir))
    store = VerdictStore(mnist_dir / "nonexistent-cache")  # never written: nothing changes
    folder, files = sources.obtain_files(DATASETS["mnist"], DataConfig(offline=True), store)
    assert folder.origin == "$MNISTGEN_DATA_DIR" and len(files) == 4


def test_the_sample_is_real_mnist(mnist_raw):
    """Every image of the bundled sample is a real MNIST image with the same label: its training part from MNIST's
    training file, its test part from MNIST's test file."""
    sample = sources.load_raw(DataConfig(dataset="mnist-sample"))
    for images, labels, real_images, real_labels in (
            (sample.train_images, sample.train_labels, mnist_raw.train_images, mnist_raw.train_labels),
            (sample.test_images, sample.test_labels, mnist_raw.test_images, mnist_raw.test_labels)):
        index = {image.tobytes(): i for i, image in enumerate(real_images)}
        positions = [index.get(image.tobytes()) for image in images]
        assert None not in positions
        assert real_labels[positions].tolist() == labels.tolist()
