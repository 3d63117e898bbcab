"""Checksums of dataset files: the MD5s of a file's bytes (``md5``) and of its IDX content (``content_md5``); either
matching the registry accepts it. Files are inflated no further than their content's known size (:func:`content_size`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from .idx import opened, read_stream
from .registry import FileSpec

IDX_UBYTE_HEADER = 4  # magic (2 zero bytes, type code, number of dimensions), then a uint32 per dimension


@dataclass(frozen=True)
class FileHashes:
    md5: str  # of the bytes as stored
    content_md5: str  # of the decompressed content (equal to md5 for an uncompressed file)
    size: int  # bytes as stored

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def md5_hex(data: bytes) -> str:
    # usedforsecurity=False: a published integrity checksum, not a security measure (FIPS builds allow it).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def content_size(spec: FileSpec) -> int:
    """The exact length of ``spec``'s decompressed IDX content: header, then one unsigned byte per pixel or
    label (e.g. 16 + 60000x28x28 = 47,040,016 bytes for MNIST's training images)."""
    ndim = 1 + len(spec.item_shape)
    return IDX_UBYTE_HEADER + 4 * ndim + spec.count * math.prod(spec.item_shape)


def stored_size_limit(spec: FileSpec) -> int:
    """The most bytes a copy of ``spec`` may have as stored: its content, raw or gzip-compressed (deflate adds
    at most 5 bytes per 16 KiB block to incompressible data), plus room for the gzip header and trailer."""
    size = content_size(spec)
    return size + size // 1000 + (64 << 10)


def hash_stream(handle: BinaryIO, name: str, size: int | None = None) -> tuple[FileHashes, bytes]:
    """Read the open file ``handle`` once, in chunks: its hashes and its IDX content (:func:`.idx.read_stream`)."""
    stored = hashlib.md5(usedforsecurity=False)
    counted = [0]

    def tap(chunk: bytes) -> None:
        stored.update(chunk)
        counted[0] += len(chunk)

    content = read_stream(handle, name, size, tap)
    return FileHashes(md5=stored.hexdigest(), content_md5=md5_hex(content), size=counted[0]), content


def hash_file(path: Path, size: int | None = None) -> tuple[FileHashes, bytes]:
    """:func:`hash_stream` of the file ``path`` (an unreadable file is a DataError naming it)."""
    with opened(path) as handle:
        return hash_stream(handle, str(path), size)


def accepted_md5(spec: FileSpec, hashes: FileHashes) -> str | None:
    """The registry checksum these hashes match (content MD5 preferred), or None if neither matches."""
    if spec.content_md5 is not None and hashes.content_md5 == spec.content_md5:
        return spec.content_md5
    if spec.gz_md5 is not None and hashes.md5 == spec.gz_md5:
        return spec.gz_md5
    return None


def mismatch_reason(spec: FileSpec, hashes: FileHashes) -> str | None:
    if accepted_md5(spec, hashes) is not None:
        return None
    if spec.content_md5 is not None:
        return f"checksum mismatch: content MD5 {hashes.content_md5}, expected {spec.content_md5}"
    return f"checksum mismatch: MD5 {hashes.md5}, expected {spec.gz_md5}"
