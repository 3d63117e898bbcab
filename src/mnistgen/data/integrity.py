"""Checksums of dataset files: what a file's bytes hash to, and whether that matches the registry.

A file is described by two MD5s: of its bytes as stored (``md5``; for a .gz file, what the mirrors
publish) and of its decompressed IDX content (``content_md5``; what SPEC §1 gives, and the same for
any gzip wrapper). A file is accepted when either one equals the registry's value for it, so a copy
re-compressed locally (different wrapper, same content) still checks out, while one flipped bit in
the content never does.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from .idx import decompress, read_file
from .registry import FileSpec


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


def hash_bytes(raw: bytes, name: str) -> tuple[FileHashes, bytes]:
    """Hashes of a file's ``raw`` bytes, and its decompressed content (a corrupt gzip is a DataError naming it)."""
    content = decompress(raw, name)
    md5 = md5_hex(raw)
    content_md5 = md5 if content is raw else md5_hex(content)
    return FileHashes(md5=md5, content_md5=content_md5, size=len(raw)), content


def hash_file(path: Path) -> tuple[FileHashes, bytes]:
    """Read ``path`` once: its hashes and its decompressed content."""
    return hash_bytes(read_file(path), str(path))


def accepted_md5(spec: FileSpec, hashes: FileHashes) -> str | None:
    """The registry checksum these hashes match (content MD5 preferred), or None if neither matches."""
    if spec.content_md5 is not None and hashes.content_md5 == spec.content_md5:
        return spec.content_md5
    if spec.gz_md5 is not None and hashes.md5 == spec.gz_md5:
        return spec.gz_md5
    return None


def mismatch_reason(spec: FileSpec, hashes: FileHashes) -> str | None:
    """None if the file checks out, else a short reason saying which checksum differs."""
    if accepted_md5(spec, hashes) is not None:
        return None
    if spec.content_md5 is not None:
        return f"checksum mismatch: content MD5 {hashes.content_md5}, expected {spec.content_md5}"
    return f"checksum mismatch: MD5 {hashes.md5}, expected {spec.gz_md5}"
