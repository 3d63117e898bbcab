"""Downloading one dataset file with plain ``urllib``: mirrors in order, timeouts, retries, a progress bar.

The bytes go to a ``.part`` file renamed onto ``<folder>/<name>`` only once complete and checksum-matched (deleted
on any failure, Ctrl-C included); memory and disk stay bounded (docs/RELIABILITY.md).
"""
from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import DataConfig
from ..errors import DataError, MnistgenError
from ..files import replacing, to_stderr
from ..version import __version__
from .integrity import FileHashes, content_size, hash_stream, mismatch_reason, stored_size_limit
from .registry import DatasetSpec, FileSpec

MIRRORS_ENV = "MNISTGEN_MIRRORS"
URL_SCHEMES = ("http://", "https://", "file://")
CHUNK_BYTES = 1 << 16  # one read() of the response; small enough for a smooth progress bar
RETRY_BACKOFF_S = 1.0  # pause before the 2nd round over the mirrors; doubled for each further round
RETRY_HTTP_CODES = frozenset({408, 425, 429})  # 4xx codes that mean "try again later"
USER_AGENT = f"mnistgen/{__version__} (Python urllib)"
PART_SUFFIX = ".part"  # of the temporary file a download is written to
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)
NO_ANSWER = "no answer"  # the reason of a mirror that could not be connected to (a bare URLError)


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
    if isinstance(error, http.client.IncompleteRead | ConnectionResetError | http.client.RemoteDisconnected):
        return f"transfer cut off ({type(error).__name__})", True
    return f"{type(error).__name__}: {error}".rstrip(": "), isinstance(error, http.client.HTTPException)


def _progress_bar(total: int | None, name: str) -> tqdm:
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=not sys.stderr.isatty(), dynamic_ncols=True)


def _receive(url: str, name: str, part: Path, timeout: float, limit: int, log: Callable[[str], None]) -> None:
    """Write the body at ``url`` into ``part``: a failure of the mirror or the network is a :class:`_MirrorFailed`,
    one of the local file system an OSError."""
    with open(part, "wb") as out:
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}),
                                              timeout=timeout)
        except NETWORK_ERRORS as exc:
            if type(exc) is urllib.error.URLError and not url.startswith("file:"):  # no name, route or listener
                raise _MirrorFailed(NO_ANSWER, retry=False) from None
            raise _MirrorFailed(*_describe(exc, timeout)) from None
        log(f"mnistgen: downloading {name} from {url}")
        with response:
            declared = response.headers.get("Content-Length")
            expected = int(declared) if declared and declared.isdigit() else None
            if expected is not None and expected > limit:
                raise _MirrorFailed(f"serves {expected} bytes, more than the {limit} bytes a copy of {name} can have",
                                    retry=False)
            received = 0
            with _progress_bar(expected, name) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except NETWORK_ERRORS as exc:
                        raise _MirrorFailed(*_describe(exc, timeout)) from None
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > limit:
                        raise _MirrorFailed(f"sent more than the {limit} bytes a copy of {name} can have", retry=False)
                    out.write(chunk)
                    bar.update(len(chunk))
    if expected is not None and received != expected:
        raise _MirrorFailed(f"transfer cut off after {received} of {expected} bytes", retry=True)


def _attempt(url: str, spec: FileSpec, folder: Path, timeout: float, log: Callable[[str], None]) -> Downloaded:
    """One try from one URL; the file lands at ``folder/spec.name`` only if complete and checksum-valid."""
    target = folder / spec.name
    try:
        with replacing(target, PART_SUFFIX) as part:  # removes the .part file on any exception
            _receive(url, spec.name, part, timeout, stored_size_limit(spec), log)
            with open(part, "rb") as handle:
                try:
                    hashes, content = hash_stream(handle, url, content_size(spec))
                except DataError as exc:  # not valid gzip, or inflating past the file's size: not this file
                    raise _MirrorFailed(str(exc).removeprefix(f"{url}: "), retry=False) from None
            reason = mismatch_reason(spec, hashes)
            if reason is not None:
                raise _MirrorFailed(reason, retry=False)
    except MnistgenError as exc:  # from replacing(): the local file system failed, not the mirror
        raise DataError(f"{exc} (downloading from {url})") from None
    return Downloaded(target, hashes, content, url)


def download_file(spec: FileSpec, mirrors: Sequence[str], folder: Path, timeout: float, retries: int,
                  backoff: float = RETRY_BACKOFF_S, log: Callable[[str], None] = to_stderr) -> Downloaded:
    """Fetch ``spec.name`` into ``folder`` from the first mirror that delivers it intact (a failure logged unless the
    mirror could not be reached). A server error (5xx, 408, 429) or a cut-off transfer is tried again in up to
    ``retries`` further rounds, after ``backoff``, 2x``backoff``, ... seconds."""
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
            try:
                return _attempt(url, spec, folder, timeout, log)
            except _MirrorFailed as failure:
                last_reason[url] = failure.reason
                if failure.reason != NO_ANSWER:
                    log(f"mnistgen: {url}: {failure.reason}")
                if failure.retry:
                    retry_later.append(base)
        active = retry_later
        if not active:
            break
    if last_reason and set(last_reason.values()) == {NO_ANSWER}:
        raise DownloadError(f"the network is unreachable (no answer from {', '.join(mirrors)})")
    tried = "; ".join(f"{url}: {reason}" for url, reason in last_reason.items()) or "no mirror given"
    raise DownloadError(f"{spec.name}: no mirror delivered it ({tried})")
