"""The per-user cache (``$MNISTGEN_CACHE_DIR``, else platformdirs' for "mnistgen"): ``CACHE/<dataset>/`` (downloads),
``CACHE/verified.json`` (hashes of verified files, reused while their size and mtime are unchanged) and the C kernels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs

from ..errors import MnistgenError
from ..files import atomic_write
from .integrity import FileHashes

CACHE_DIR_ENV = "MNISTGEN_CACHE_DIR"
VERDICTS_FILE = "verified.json"


def cache_root() -> Path:
    """The user cache folder (not created here)."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("mnistgen", appauthor=False))


class VerdictStore:
    """Hashes of files that passed verification, keyed by absolute path, valid for one (size, mtime)."""

    def __init__(self, root: Path):
        self.path = Path(root) / VERDICTS_FILE
        self._entries: dict[str, dict] = self._read()
        self._changed: dict[str, dict | None] = {}

    def _read(self) -> dict[str, dict]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent or damaged: every file is simply verified again
            return {}
        return entries if isinstance(entries, dict) else {}

    @staticmethod
    def _key(file: Path) -> str:
        return str(Path(file).resolve())

    @staticmethod
    def _stamp(file: Path) -> dict[str, int]:
        status = Path(file).stat()
        return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}

    def lookup(self, file: Path) -> FileHashes | None:
        """The remembered hashes of ``file``, or None if unknown or changed since."""
        entry = self._entries.get(self._key(file))
        if not isinstance(entry, dict):
            return None
        try:
            if {k: entry.get(k) for k in ("size", "mtime_ns")} != self._stamp(file):
                return None
            return FileHashes(md5=str(entry["md5"]), content_md5=str(entry["content_md5"]), size=int(entry["size"]))
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def remember(self, file: Path, hashes: FileHashes) -> None:
        entry = {**self._stamp(file), "md5": hashes.md5, "content_md5": hashes.content_md5}
        self._entries[self._key(file)] = self._changed[self._key(file)] = entry

    def forget(self, file: Path) -> None:
        self._entries.pop(self._key(file), None)
        self._changed[self._key(file)] = None

    def save(self) -> None:
        """Write changes, merged into what is on disk now (another process may have added entries)."""
        if not self._changed:
            return
        merged = self._read()
        for key, entry in self._changed.items():
            if entry is None:
                merged.pop(key, None)
            else:
                merged[key] = entry
        try:
            text = json.dumps(merged, indent=1, sort_keys=True) + "\n"
            atomic_write(self.path, lambda handle: handle.write(text), mode="w")
        except (OSError, MnistgenError):
            pass  # an unwritable cache costs only speed: the files are verified again next time
        self._changed.clear()
