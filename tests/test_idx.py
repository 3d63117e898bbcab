"""The IDX reader on synthetic files: valid ones of every type, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnistgen.data.idx import MAX_CONTENT_BYTES, decode_idx, decompress, parse_idx, read_bytes, read_idx
from mnistgen.data.integrity import content_size, hash_file
from mnistgen.data.registry import DATASETS, IMAGES_MAGIC, LABELS_MAGIC
from mnistgen.errors import DataError

TYPE_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file written by hand from the format's definition (independent of the reader)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(TYPE_CODES[type_code]).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_reads_valid_images_gzip_or_raw(tmp_path, images, compress):
    content = idx_bytes(images)
    path = tmp_path / "images.idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    array = read_idx(path, expect_magic=IMAGES_MAGIC, expect_shape_tail=(28, 28))
    assert array.dtype == np.uint8 and array.shape == (7, 28, 28)
    np.testing.assert_array_equal(array, images)


@pytest.mark.parametrize("type_code", sorted(TYPE_CODES))
def test_every_type_code_round_trips_in_native_byte_order(type_code):
    values = np.arange(-6, 6).reshape(3, 4) * (1.5 if type_code >= 0x0D else 1)
    if type_code == 0x08:
        values = np.abs(values)
    array = parse_idx(idx_bytes(values, type_code))
    assert array.shape == (3, 4)
    assert array.dtype.isnative
    np.testing.assert_array_equal(array, values)


def test_labels_one_dimensional(tmp_path):
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path, expect_magic=LABELS_MAGIC, expect_shape_tail=()), labels)


def test_empty_dimension_is_a_valid_empty_array():
    assert parse_idx(idx_bytes(np.zeros((0, 28, 28), np.uint8))).shape == (0, 28, 28)


def _write(tmp_path, content: bytes, gz: bool = True):
    path = tmp_path / "broken-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c[:-1], "truncated: header says 7x28x28 of uint8 (5504 bytes), file has 5503 bytes"),
        (lambda c: c[:100], "truncated"),
        (lambda c: c + b"\0", "has trailing bytes"),
        (lambda c: c[:10], "truncated header (10 bytes, need 16 for 3 dimensions)"),
        (lambda c: c[:3], "too short for an IDX header"),
        (lambda c: b"\x1f\x8c" + c[2:], "not an IDX file (magic starts 1f8c"),
        (lambda c: c[:2] + b"\x07" + c[3:], "unknown IDX type code 0x07"),
        (lambda c: c[:3] + b"\x00" + c[4:], "IDX header declares 0 dimensions"),
        (lambda c: c[:3] + b"\x02" + c[4:], "has trailing bytes: header says 7x28"),  # 2-D header, 3-D body
        (lambda c: c[:4] + struct.pack(">I", 8) + c[8:], "truncated: header says 8x28x28"),  # wrong count
    ],
    ids=["one-byte-short", "cut", "trailing", "short-header", "tiny", "wrong-magic", "bad-type", "no-dims",
         "wrong-ndim", "wrong-count"],
)
def test_malformed_files_give_one_line_naming_the_file(tmp_path, images, mutate, expected):
    path = _write(tmp_path, mutate(idx_bytes(images)))
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


def test_labels_file_given_as_images_is_mislabelled(tmp_path):
    path = _write(tmp_path, idx_bytes(np.arange(10, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"magic 0x00000801, expected 0x00000803 \(wrong or mislabelled file\)"):
        read_idx(path, expect_magic=IMAGES_MAGIC)


def test_wrong_image_size_is_rejected(tmp_path):
    path = _write(tmp_path, idx_bytes(np.zeros((4, 32, 32), np.uint8)))
    with pytest.raises(DataError, match="items of shape 32x32, expected 28x28"):
        read_idx(path, expect_magic=IMAGES_MAGIC, expect_shape_tail=(28, 28))


def test_corrupt_and_truncated_gzip(tmp_path, images):
    packed = bytearray(gzip.compress(idx_bytes(images)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(bytes(packed[: len(packed) // 2]))
    with pytest.raises(DataError, match=f"{cut}: corrupt or truncated gzip data"):
        read_idx(cut)
    packed[-6] ^= 0xFF  # inside the CRC32 trailer: the data inflates but fails its check
    bad_crc = tmp_path / "crc.gz"
    bad_crc.write_bytes(bytes(packed))
    with pytest.raises(DataError, match=f"{bad_crc}: corrupt or truncated gzip data"):
        read_idx(bad_crc)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope.gz'}: no such file"):
        read_bytes(tmp_path / "nope.gz")
    with pytest.raises(DataError, match="is a folder"):
        read_bytes(tmp_path)


def test_huge_declared_dimensions_do_not_overflow():
    # 4 x (2^32 - 1): the product overflows int64; it must still be compared exactly with the length.
    content = bytes([0, 0, 8, 4]) + struct.pack(">4I", *[2**32 - 1] * 4)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(content)


# --------------------------------------------------------------------------- bounded memory (gzip bombs)

GIB = 1 << 30
MEMORY_BUDGET_MB = 200  # the most a rejected file may add to a process's peak memory
MNIST_TRAIN = DATASETS["mnist"].file("train_images")
MNIST_TRAIN_HEADER = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28)


def write_gzip_bomb(path: Path, header: bytes = MNIST_TRAIN_HEADER, total: int = GIB) -> Path:
    """A gzip file of about ``total`` / 1000 bytes that inflates to ``total`` bytes: ``header``, then zeros.

    Built in a moment and in little memory: concatenated gzip members of 1 MiB each (one valid gzip file)."""
    block = 1 << 20
    zeros = gzip.compress(bytes(block), compresslevel=9, mtime=0)
    with open(path, "wb") as out:
        out.write(gzip.compress(header + bytes(block - len(header)), compresslevel=9, mtime=0))
        for _ in range(total // block - 1):
            out.write(zeros)
    return path


_MEASURE = """
import resource, sys
from mnistgen.data import download, idx, integrity, registry, sources  # imported before the baseline

def peak_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024

before = peak_mb()
exec(sys.argv[1])
print("PEAK_MB", before, peak_mb())
"""


def run_measured(code: str, *args: str) -> tuple[float, float, list[str]]:
    """Run ``code`` (``sys.argv[2:]`` are ``args``) in a fresh Python, so that the test process's own memory does
    not blur the number: its peak resident memory before and after, in MB, and the lines it printed."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, code, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    _, before, after = lines[-1].split()
    return float(before), float(after), lines[:-1]


_READ_THE_BOMB = """
path, spec = sys.argv[2], registry.DATASETS["mnist"].file("train_images")
for read in (lambda: sources.check_file(path, spec, None),  # a file found in a data folder
             lambda: integrity.hash_file(path, integrity.content_size(spec)),  # the registry's size known
             lambda: idx.read_idx(path)):  # any IDX file: the size its header claims
    try:
        read()
        print("accepted")
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
"""


def test_gzip_bomb_in_a_data_folder_is_rejected_in_bounded_memory(tmp_path):
    """1 MB on disk that inflates to 1 GiB, its header claiming MNIST's training images: read no further than
    those 47 MB, whichever way it is read."""
    path = write_gzip_bomb(tmp_path / MNIST_TRAIN.name)
    assert path.stat().st_size < 2 << 20
    before, after, lines = run_measured(_READ_THE_BOMB, str(path))
    assert after - before < MEMORY_BUDGET_MB, f"peak memory rose from {before:.0f} MB to {after:.0f} MB"
    size = content_size(MNIST_TRAIN)
    assert lines == [
        f"DataError: {path}: inflates to more than the {size} bytes expected (reading stopped there)",
        f"DataError: {path}: inflates to more than the {size} bytes expected (reading stopped there)",
        f"DataError: {path}: has trailing bytes: header says 60000x28x28 of uint8 ({size} bytes), "
        "file inflates to more (reading stopped there)",
    ]


def test_header_claiming_too_much_is_refused_before_inflating(tmp_path):
    claim = 4 + 12 + 1_000_000 * 28 * 28  # 784 MB: more than any IDX file mnistgen reads
    path = write_gzip_bomb(tmp_path / "huge-idx3-ubyte.gz", bytes([0, 0, 8, 3]) + struct.pack(">3I", 1_000_000, 28, 28),
                           total=4 << 20)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value) == (f"{path}: header says 1000000x28x28 of uint8 ({claim} bytes), more than the "
                               f"{MAX_CONTENT_BYTES} bytes an IDX file may have")


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_content_longer_than_the_known_size_is_rejected(tmp_path, images, compress):
    content = idx_bytes(images)
    path = tmp_path / "images.idx"
    path.write_bytes(gzip.compress(content + bytes(5000)) if compress else content + bytes(5000))
    with pytest.raises(DataError) as info:
        hash_file(path, len(content))
    verb = "inflates to" if compress else "has"
    assert str(info.value) == f"{path}: {verb} more than the {len(content)} bytes expected (reading stopped there)"
    exact = tmp_path / "exact.gz"
    exact.write_bytes(gzip.compress(content) if compress else content)
    hashes, read = hash_file(exact, len(content))
    assert read == content and hashes.size == exact.stat().st_size


def test_decompress_stops_at_its_cap():
    packed = gzip.compress(bytes(3000))
    assert decompress(packed, "x.gz", size=3000) == bytes(3000)
    with pytest.raises(DataError, match=r"^x.gz: inflates to more than the 2999 bytes expected"):
        decompress(packed, "x.gz", size=2999)


# --------------------------------------------------------------------------- property-based


def _consistent(array: np.ndarray, content: bytes) -> bool:
    ndim = content[3]
    shape = struct.unpack(f">{ndim}I", content[4:4 + 4 * ndim])
    return array.shape == shape and len(content) == 4 + 4 * ndim + array.nbytes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_an_array_or_a_data_error(content):
    try:
        array = parse_idx(content, "fuzz")
    except DataError as exc:
        assert str(exc).startswith("fuzz: ")
        return
    assert isinstance(array, np.ndarray) and _consistent(array, content)


@settings(max_examples=300, deadline=None)
@given(
    type_code=st.sampled_from(sorted(TYPE_CODES) + [0x00, 0x0A, 0xFF]),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    delta=st.integers(-3, 3),
)
def test_near_valid_files_are_accepted_exactly_when_consistent(type_code, shape, delta):
    """Headers that parse, bodies off by a few bytes: accepted iff the type is known and the length exact."""
    itemsize = np.dtype(TYPE_CODES.get(type_code, ">u1")).itemsize
    body_length = max(0, int(np.prod(shape, dtype=np.int64)) * itemsize + delta)
    content = bytes([0, 0, type_code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)
    content += bytes(range(256)) * (body_length // 256) + bytes(range(body_length % 256))
    valid = type_code in TYPE_CODES and len(shape) > 0 and body_length == np.prod(shape) * itemsize
    try:
        array = parse_idx(content, "near")
    except DataError:
        assert not valid
        return
    assert valid and array.shape == tuple(shape)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_gzip_like_bytes_inflate_or_give_a_data_error(tail):
    raw = b"\x1f\x8b" + tail
    try:
        content = decompress(raw, "fuzz.gz")
    except DataError as exc:
        assert str(exc).startswith("fuzz.gz: corrupt or truncated gzip data")
        return
    assert isinstance(content, bytes)
    try:
        decode_idx(content, "fuzz.gz", IMAGES_MAGIC, (28, 28))
    except DataError:
        pass
