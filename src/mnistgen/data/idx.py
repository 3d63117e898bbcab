"""Reading IDX files (the MNIST format), gzip-compressed or raw, with every header field validated.

Each function returns an array whose shape agrees with the file's length (a zero-copy, read-only view), or a one-line
:class:`DataError` naming the file; inflating stops one byte past a cap (at most :data:`MAX_CONTENT_BYTES`).
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
# The most content mnistgen holds from one data file: 2.8x the largest file it knows (MNIST's training
# images, 47,040,016 bytes), and small enough that a hostile file cannot exhaust a machine's memory.
MAX_CONTENT_BYTES = 128 << 20
READ_CHUNK_BYTES = 1 << 20  # content inflated per step
MAX_HEADER_BYTES = 4 + 4 * 255  # the magic and up to 255 dimension sizes

# IDX type code -> big-endian numpy dtype
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@contextmanager
def opened(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading; a missing or unreadable file (then or while reading it in the block) is a
    DataError naming it."""
    try:
        with open(path, "rb") as handle:
            yield handle
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


class _Tapped:
    """A binary file whose bytes, as read, are also handed to ``tap`` (an MD5's ``update``)."""

    def __init__(self, handle: BinaryIO, tap: Callable[[bytes], object] | None):
        self._handle, self._tap = handle, tap

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if self._tap is not None:
            self._tap(chunk)
        return chunk


def _copy(stream: BinaryIO, out: io.BytesIO, count: int) -> None:
    """Append up to ``count`` bytes of ``stream`` to ``out``; fewer only at the end of the stream."""
    while count > 0:
        chunk = stream.read(min(READ_CHUNK_BYTES, count))
        if not chunk:
            return
        out.write(chunk)
        count -= len(chunk)


def read_stream(handle: BinaryIO, name: str, size: int | None = None, tap: Callable[[bytes], object] | None = None,
                idx: bool = True) -> bytes:
    """The IDX content (``idx``: capped by its header where ``size`` is not known) of the open, seekable file
    ``handle``, inflated if it starts with the gzip magic (by content, not name), never read past its cap. ``tap``
    sees every byte read: the whole file once this returns. A corrupt gzip or content past its cap is a DataError
    naming ``name``; file system errors are left to the caller."""
    head = handle.read(2)
    handle.seek(-len(head), io.SEEK_CUR)
    packed = head == GZIP_MAGIC
    source = _Tapped(handle, tap)
    stream = gzip.GzipFile(fileobj=source, mode="rb") if packed else source
    verb = "inflates to" if packed else "has"
    out = io.BytesIO()
    try:
        if size is None and idx:
            _copy(stream, out, MAX_HEADER_BYTES)
            _, shape, dtype, claim = _header(out.getvalue(), name)
            if claim > MAX_CONTENT_BYTES:
                raise DataError(f"{name}: header says {_described(shape)} of {dtype.name} ({claim} bytes), more "
                                f"than the {MAX_CONTENT_BYTES} bytes an IDX file may have")
            limit = claim
        else:
            limit = MAX_CONTENT_BYTES if size is None else size
        _copy(stream, out, limit + 1 - out.tell())  # one byte more than the cap tells "too long" from "exact"
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    if out.tell() > limit:
        if size is None and idx:
            raise DataError(f"{name}: has trailing bytes: header says {_described(shape)} of {dtype.name} "
                            f"({limit} bytes), file {verb} more (reading stopped there)")
        expected = "expected" if size is not None else "a data file may have"
        raise DataError(f"{name}: {verb} more than the {limit} bytes {expected} (reading stopped there)")
    return out.getvalue()


def decompress(raw: bytes, name: str = "<bytes>", size: int | None = None) -> bytes:
    """``raw`` inflated if it starts with the gzip magic, to at most ``size`` bytes (default
    :data:`MAX_CONTENT_BYTES`)."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    return read_stream(io.BytesIO(raw), name, size, idx=False)


def read_bytes(path: Path, size: int | None = None) -> bytes:
    with opened(path) as handle:
        return read_stream(handle, str(path), size)


def _described(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if len(shape) <= 8 else f"{len(shape)}-dimensional array"


def _header(content: bytes, name: str) -> tuple[int, tuple[int, ...], np.dtype, int]:
    """The IDX header at the start of ``content``, checked: its length, the shape, the dtype and the length of
    the whole file it describes."""
    if len(content) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(content)} bytes)")
    if content[0] != 0 or content[1] != 0:
        raise DataError(f"{name}: not an IDX file (magic starts {content[:2].hex()}, expected 0000)")
    type_code, ndim = content[2], content[3]
    if type_code not in IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{name}: truncated header ({len(content)} bytes, need {header} for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    # Python ints: a product of up to 255 uint32 sizes must not wrap around as an int64 would.
    return header, shape, dtype, header + math.prod(shape) * dtype.itemsize


def parse_idx(content: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX ``content`` into an array of its declared shape; any inconsistency is a DataError."""
    header, shape, dtype, expected = _header(content, name)
    if len(content) != expected:
        what = "truncated" if len(content) < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: header says {_described(shape)} of {dtype.name} ({expected} bytes), file "
                        f"has {len(content)} bytes")
    array = np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def decode_idx(content: bytes, name: str, expect_magic: int | None = None,
               expect_shape_tail: tuple[int, ...] | None = None) -> np.ndarray:
    """:func:`parse_idx` plus the checks a known file allows: its 4-byte magic and its item shape (e.g. 28x28)."""
    if expect_magic is not None and len(content) >= 4:
        magic = int.from_bytes(content[:4], "big")
        if magic != expect_magic:
            raise DataError(f"{name}: magic 0x{magic:08x}, expected 0x{expect_magic:08x} (wrong or mislabelled file)")
    array = parse_idx(content, name)
    if expect_shape_tail is not None and tuple(array.shape[1:]) != tuple(expect_shape_tail):
        shape = "x".join(map(str, array.shape[1:])) or "scalar"
        wanted = "x".join(map(str, expect_shape_tail)) or "scalar"
        raise DataError(f"{name}: items of shape {shape}, expected {wanted} (wrong or mislabelled file)")
    return array


def read_idx(path: Path, expect_magic: int | None = None, expect_shape_tail: tuple[int, ...] | None = None
             ) -> np.ndarray:
    """Read an IDX file; optionally require its 4-byte magic and its trailing dimensions (e.g. 28x28)."""
    return decode_idx(read_bytes(path), str(path), expect_magic, expect_shape_tail)
