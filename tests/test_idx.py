"""The IDX reader on synthetic files: valid ones of every type, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnistgen.data.idx import decode_idx, decompress, parse_idx, read_bytes, read_idx
from mnistgen.data.registry import IMAGES_MAGIC, LABELS_MAGIC
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
