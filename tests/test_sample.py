"""mnistgen's bundled 5,000-digit MNIST sample: balanced, checked on every load, exactly the real MNIST images its
rule names, reproduced byte for byte by scripts/make_sample.py, and usable from the package alone."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistgen.config import DataConfig
from mnistgen.data import sample, sources
from mnistgen.data.registry import SAMPLE_SPEC
from mnistgen.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "mnistgen" / "assets" / "mnist-sample"
HEAVY = ("mlxtend", "pandas", "sklearn", "scipy", "pooch")


@pytest.fixture(scope="module")
def sample_raw():
    return sources.load_raw(DataConfig(dataset="mnist-sample"))


def test_sample_is_balanced_and_every_prefix_is_too(sample_raw):
    assert sample_raw.train_images.shape == (4000, 28, 28) and sample_raw.test_images.shape == (1000, 28, 28)
    assert sample_raw.train_images.dtype == np.uint8 and sample_raw.train_labels.dtype == np.int64
    assert np.bincount(sample_raw.train_labels).tolist() == [400] * 10
    assert np.bincount(sample_raw.test_labels).tolist() == [100] * 10
    # interleaved by digit: 0, 1, ..., 9, 0, 1, ... so any prefix of 10k images holds k of each digit
    assert sample_raw.train_labels.tolist() == list(range(10)) * 400
    assert sample_raw.test_labels.tolist() == list(range(10)) * 100


def test_sample_images_are_distinct(sample_raw):
    images = np.concatenate([sample_raw.train_images, sample_raw.test_images]).reshape(5000, -1)
    assert len({row.tobytes() for row in images}) == 5000


def evenly_spaced(labels: np.ndarray, per_digit: int) -> list[int]:
    """The rule, written out independently: per digit, positions floor(i * n / k) of its images in file order,
    then the i-th of digit 0, ..., of digit 9, for each i."""
    by_digit = [[int(p) for p in np.flatnonzero(labels == d)] for d in range(10)]
    return [by_digit[d][(i * len(by_digit[d])) // per_digit] for i in range(per_digit) for d in range(10)]


def test_each_sample_image_is_the_real_mnist_image_its_rule_names(sample_raw, mnist_raw):
    train_rows = evenly_spaced(mnist_raw.train_labels, 400)
    test_rows = evenly_spaced(mnist_raw.test_labels, 100)
    assert len(set(train_rows)) == 4000 and len(set(test_rows)) == 1000
    # evenly spaced through each whole file: the test part takes from both halves of t10k (NIST's SD-3 and SD-1)
    assert min(train_rows) < 100 and max(train_rows) > 59000
    assert sum(r < 5000 for r in test_rows) in range(450, 551)
    np.testing.assert_array_equal(sample_raw.train_images, mnist_raw.train_images[train_rows])
    np.testing.assert_array_equal(sample_raw.train_labels, mnist_raw.train_labels[train_rows])
    np.testing.assert_array_equal(sample_raw.test_images, mnist_raw.test_images[test_rows])
    np.testing.assert_array_equal(sample_raw.test_labels, mnist_raw.test_labels[test_rows])


def test_the_script_reproduces_the_shipped_files_byte_for_byte(mnist_dir, tmp_path):
    out = tmp_path / "made"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample.py"), "--mnist-dir", str(mnist_dir),
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted(f.name for f in SAMPLE_SPEC.files)
    for spec in SAMPLE_SPEC.files:
        data = (out / spec.name).read_bytes()
        assert hashlib.md5(gzip.decompress(data)).hexdigest() == spec.content_md5, spec.name
        assert data == (SHIPPED / spec.name).read_bytes(), (
            f"{spec.name}: same content, other gzip bytes (a zlib that deflates unlike stock zlib?)")
        assert f"{spec.name}  " in result.stdout and spec.gz_md5 in result.stdout


def test_registry_checksums_are_those_of_the_shipped_files():
    for spec in SAMPLE_SPEC.files:
        data = (SHIPPED / spec.name).read_bytes()
        assert hashlib.md5(data).hexdigest() == spec.gz_md5, spec.name
        assert hashlib.md5(gzip.decompress(data)).hexdigest() == spec.content_md5, spec.name
        assert data[4:8] == b"\0\0\0\0" and data[3] == 0  # gzip header: mtime 0, no file name
    assert sample.sample_folder() == SHIPPED  # this checkout's package (an editable install)


def test_sample_provenance_names_its_files_source_and_license(sample_raw):
    prov = sample_raw.provenance
    assert prov["dataset"] == "mnist-sample" and prov["sample"] is True
    assert prov["title"] == "MNIST 5,000-digit sample" and prov["train_size"] == 4000 and prov["test_size"] == 1000
    assert prov["license"] == "CC BY-SA 3.0" and "Yann LeCun, Corinna Cortes, Christopher J.C. Burges" in prov["source"]
    assert prov["folder"] == str(SHIPPED) and "evenly spaced" in prov["split"]
    assert prov["files"] == [
        {"role": spec.role, "name": spec.name, "path": str(SHIPPED / spec.name), "md5": spec.gz_md5,
         "content_md5": spec.content_md5, "size": (SHIPPED / spec.name).stat().st_size}
        for spec in SAMPLE_SPEC.files
    ]


def test_the_license_is_stated_beside_the_files():
    text = (SHIPPED / "README.md").read_text(encoding="utf-8")
    for words in ("Yann LeCun", "Corinna Cortes", "Christopher J.C. Burges", "CC BY-SA 3.0",
                  "Creative Commons Attribution-Share Alike 3.0", "scripts/make_sample.py"):
        assert words in text
    assert "CC BY-SA 3.0" in sample.__doc__ and "CC BY-SA 3.0" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_verify_reports_each_sample_file():
    folder, reports = sources.verify_files(DataConfig(dataset="mnist-sample"))
    assert folder is None
    assert [r.line() for r in reports] == [f"OK {spec.name} {spec.gz_md5}" for spec in SAMPLE_SPEC.files]


# --------------------------------------------------------------------------- a damaged package


@pytest.fixture
def sample_copy(tmp_path, monkeypatch):
    folder = tmp_path / "mnist-sample"
    shutil.copytree(SHIPPED, folder)
    monkeypatch.setattr(sample, "sample_folder", lambda: folder)
    return folder


def flip_last_content_byte(path: Path) -> None:
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[-1] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(content), mtime=0))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_last_content_byte, r"sample-t10k-images-idx3-ubyte\.gz: checksum mismatch: content MD5 \w+, expected "
                                 r"98823ef7529b063f13cea0f63bfa6364 \(mnistgen's MNIST sample is damaged"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), r"sample-t10k-images-idx3-ubyte\.gz: corrupt or truncated "
                                                         r"gzip data .*\(mnistgen's MNIST sample is damaged"),
        (lambda p: p.unlink(), r"sample-t10k-images-idx3-ubyte\.gz: missing: mnistgen's MNIST sample is incomplete"),
    ],
    ids=["bit-flip", "truncated", "missing"],
)
def test_a_damaged_sample_file_is_one_line_naming_it(sample_copy, damage, message):
    damage(sample_copy / "sample-t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=message) as info:
        sources.load_raw(DataConfig(dataset="mnist-sample"))
    assert "\n" not in str(info.value) and "reinstall mnistgen" in str(info.value)


# --------------------------------------------------------------------------- from the package alone

BLOCK_HEAVY = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is blocked: mnistgen must not need it")
sys.meta_path.insert(0, Block())
"""


def test_offline_fallback_needs_nothing_but_the_package(tmp_path):
    """No data folder, an empty cache, offline, and mlxtend/pandas/scikit-learn/scipy/pooch unimportable: MNIST
    falls back to the bundled sample, loudly, and none of those modules is loaded."""
    code = BLOCK_HEAVY + """
from mnistgen.config import DataConfig
from mnistgen.data.sources import load_raw
raw = load_raw(DataConfig())
assert raw.provenance["dataset"] == "mnist-sample" and raw.provenance["requested_dataset"] == "mnist"
print(raw.provenance["train_size"], raw.provenance["test_size"], sorted(set(sys.modules) & {heavy!r}))
""".replace("{heavy!r}", repr(set(HEAVY)))
    env = {k: v for k, v in os.environ.items() if k != sources.DATA_DIR_ENV}
    env.update(MNISTGEN_OFFLINE="1", MNISTGEN_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "4000 1000 []"
    assert "WARNING: using the 5,000-digit MNIST sample shipped with mnistgen" in result.stderr
