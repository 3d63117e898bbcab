"""Downloading one dataset file: mirrors in order, timeouts, retries, a progress bar, an atomic rename.

Plain ``urllib`` (no pooch/requests) because what is needed here is a loop that pooch does not
provide: several mirrors per file tried in order, a failure classified per mirror (a stalled or
refusing mirror is dropped at once, a server error or a cut-off transfer is retried in a later
round), and acceptance by either of two checksums (:mod:`.integrity`).

Guarantees:
- the bytes go to a temporary ``.<name>.<random>.part`` file in the destination folder; only after
  the whole body arrived (``Content-Length`` honoured) and its checksum matched is it renamed onto
  ``<folder>/<name>`` (same folder, so the rename is atomic);
- on any failure, Ctrl-C included, the temporary file is deleted: a wrong or partial file never
  appears under the real name;
- a server that stops sending costs at most ``timeout`` seconds (the socket timeout applies to the
  connection and to every read), after which the next mirror is tried.
"""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .. import __version__
from ..config import DataConfig
from ..errors import DataError
from .idx import read_file
from .integrity import FileHashes, hash_bytes, mismatch_reason
from .registry import DatasetSpec, FileSpec

MIRRORS_ENV = "MNISTGEN_MIRRORS"
URL_SCHEMES = ("http://", "https://", "file://")
CHUNK_BYTES = 1 << 16  # one read() of the response; small enough for a smooth progress bar
RETRY_BACKOFF_S = 1.0  # pause before the 2nd round over the mirrors; doubled for each further round
RETRY_HTTP_CODES = frozenset({408, 425, 429})  # 4xx codes that mean "try again later"
USER_AGENT = f"mnistgen/{__version__} (Python urllib)"


class DownloadError(DataError):
    """No mirror delivered the file with a matching checksum."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    hashes: FileHashes
    content: bytes  # decompressed, ready to parse
    url: str


class _MirrorFailed(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


def mirror_list(data: DataConfig, spec: DatasetSpec) -> list[str]:
    """Base URLs to try, in order: ``--mirrors``, else ``$MNISTGEN_MIRRORS``, else the registry's."""
    if data.mirrors is not None:
        text, source = data.mirrors, "--mirrors"
    elif os.environ.get(MIRRORS_ENV) is not None:
        text, source = os.environ[MIRRORS_ENV], f"${MIRRORS_ENV}"
    else:
        return list(spec.mirrors)
    urls = [url.strip() for url in text.split(",") if url.strip()]
    if not urls:
        raise DataError(f"{source} is set but names no URL")
    for url in urls:
        if not url.lower().startswith(URL_SCHEMES):
            raise DataError(f"{source}: {url!r} is not an http://, https:// or file:// URL")
    return [url if url.endswith("/") else url + "/" for url in urls]


def _describe(error: BaseException, timeout: float) -> tuple[str, bool]:
    """A short reason for a failed attempt, and whether a later round may succeed on the same mirror."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}", error.code >= 500 or error.code in RETRY_HTTP_CODES
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else OSError(str(error.reason))
    if isinstance(error, TimeoutError):
        # A stall: the next mirror is likely faster than waiting on this one again.
        return f"no data for {timeout:g} s (stalled)", False
    if isinstance(error, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(error, http.client.IncompleteRead | ConnectionResetError | http.client.RemoteDisconnected):
        return f"transfer cut off ({type(error).__name__})", True
    return f"{type(error).__name__}: {error}".rstrip(": "), isinstance(error, http.client.HTTPException)


def _progress_bar(total: int | None, name: str) -> tqdm:
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=not sys.stderr.isatty(), dynamic_ncols=True)


def _attempt(url: str, spec: FileSpec, folder: Path, timeout: float) -> Downloaded:
    """One try from one URL; the file lands at ``folder/spec.name`` only if complete and checksum-valid."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise DataError(f"{folder}: cannot write a download here ({exc.strerror or exc})") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                declared = response.headers.get("Content-Length")
                expected = int(declared) if declared and declared.isdigit() else None
                received = 0
                with _progress_bar(expected, spec.name) as bar:
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise _MirrorFailed(f"transfer cut off after {received} of {expected} bytes", retry=True)
        try:
            hashes, content = hash_bytes(read_file(tmp), url)
        except DataError as exc:  # not even valid gzip: the mirror serves something else
            raise _MirrorFailed(str(exc).removeprefix(f"{url}: "), retry=False) from None
        reason = mismatch_reason(spec, hashes)
        if reason is not None:
            raise _MirrorFailed(reason, retry=False)
        target = folder / spec.name
        os.replace(tmp, target)
        return Downloaded(target, hashes, content, url)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason, retry = _describe(exc, timeout)
        raise _MirrorFailed(reason, retry) from None
    finally:
        tmp.unlink(missing_ok=True)  # after a successful rename there is nothing left to remove


def download_file(
    spec: FileSpec,
    mirrors: Sequence[str],
    folder: Path,
    timeout: float,
    retries: int,
    backoff: float = RETRY_BACKOFF_S,
    log: Callable[[str], None] | None = None,
) -> Downloaded:
    """Fetch ``spec.name`` into ``folder`` from the first mirror that delivers it intact.

    Round 1 tries every mirror in order; a mirror that answered with a server error (5xx, 408, 429)
    or cut the transfer short is tried again in up to ``retries`` further rounds, after a pause of
    ``backoff``, 2x``backoff``, ... seconds. Mirrors that refused, stalled, answered 4xx or served
    bytes with the wrong checksum are not asked again.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the download folder ({exc.strerror or exc})") from None
    last_reason: dict[str, str] = {}
    active = list(mirrors)
    for round_number in range(retries + 1):
        if round_number:
            time.sleep(backoff * 2 ** (round_number - 1))
        retry_later = []
        for base in active:
            url = base + spec.name
            log(f"mnistgen: downloading {spec.name} from {url}")
            try:
                return _attempt(url, spec, folder, timeout)
            except _MirrorFailed as failure:
                last_reason[url] = failure.reason
                log(f"mnistgen: {url}: {failure.reason}")
                if failure.retry:
                    retry_later.append(base)
        active = retry_later
        if not active:
            break
    tried = "; ".join(f"{url}: {reason}" for url, reason in last_reason.items()) or "no mirror given"
    raise DownloadError(f"{spec.name}: no mirror delivered it ({tried})")
