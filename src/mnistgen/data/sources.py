"""Where a dataset's files come from, one folder and never a silent mix, and loading them into memory with their
provenance. docs/DATA.md says where the files are found, how they are checked and when the bundled sample stands in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..files import to_stderr
from . import sample
from .cache import VerdictStore, cache_root
from .download import DownloadError, download_file, mirror_list
from .idx import decode_idx, read_bytes
from .integrity import FileHashes, accepted_md5, content_size, hash_file, mismatch_reason
from .registry import NUM_CLASSES, SAMPLE_SPEC, DatasetSpec, FileSpec, get_dataset

DATA_DIR_ENV = "MNISTGEN_DATA_DIR"
OFFLINE_ENV = "MNISTGEN_OFFLINE"
SAMPLE_STANDS_IN_FOR = "mnist"  # the one dataset the sample may replace
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
_ANNOUNCED_FALLBACKS: set[str] = set()  # datasets whose stand-in warning this process has printed (once)
_FAILED_DOWNLOADS: dict[tuple[str, ...], str] = {}  # (dataset, *mirrors) -> why this process got nothing from them


@dataclass(frozen=True)
class RawData:
    """A whole dataset in memory: uint8 images (N, 28, 28), read-only views of the decompressed files (copy before
    writing), and int64 labels (N,); ``provenance`` is what a run folder saves as ``data.json``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataFolder:
    path: Path
    origin: str  # "--data-dir", "$MNISTGEN_DATA_DIR" or "user cache"

    @property
    def named_by_user(self) -> bool:
        return self.origin != "user cache"

    def __str__(self) -> str:
        return f"{self.path} ({self.origin})"


@dataclass(frozen=True)
class LocalFile:
    spec: FileSpec
    path: Path
    hashes: FileHashes
    content: bytes = field(repr=False)
    downloaded_from: str | None = None

    @property
    def matched_md5(self) -> str:
        return accepted_md5(self.spec, self.hashes) or ""


class FilesUnavailable(DataError):
    """Some files are neither on disk nor obtainable (offline, or no mirror delivered them)."""


def offline_requested(data: DataConfig) -> bool:
    word = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if word not in _TRUE_WORDS | _FALSE_WORDS:
        raise DataError(f"${OFFLINE_ENV} must be 1 or 0 (or true/false), got {os.environ[OFFLINE_ENV]!r}")
    return data.offline or word in _TRUE_WORDS


def data_folder(data: DataConfig, dataset: str, create: bool = False) -> DataFolder:
    """The one folder where ``dataset``'s files are looked for and downloaded to. A folder the user named must exist
    unless ``create`` (``data fetch``): a mistyped path is an error, not an empty folder to fill or replace."""
    if data.data_dir:
        folder = DataFolder(Path(data.data_dir).expanduser().resolve(), "--data-dir")
    elif os.environ.get(DATA_DIR_ENV):
        folder = DataFolder(Path(os.environ[DATA_DIR_ENV]).expanduser().resolve(), f"${DATA_DIR_ENV}")
    else:
        folder = DataFolder(cache_root() / dataset, "user cache")
    if folder.path.exists() and not folder.path.is_dir():
        raise DataError(f"{folder}: is a file, not a folder")
    if folder.named_by_user and not create and not folder.path.exists():
        fetch = f"mnistgen data fetch --data-dir {folder.path}" if data.data_dir else "mnistgen data fetch"
        raise DataError(f"{folder}: no such folder (check the path; `{fetch}` creates it and downloads the files)")
    return folder


def find_local(folder: Path, spec: FileSpec) -> Path | None:
    """The file of ``spec`` in ``folder`` (as served, else decompressed), or None."""
    return next((folder / name for name in spec.local_names if (folder / name).is_file()), None)


def check_file(path: Path, spec: FileSpec, store: VerdictStore | None) -> LocalFile:
    remembered = store.lookup(path) if store is not None else None
    if remembered is not None and mismatch_reason(spec, remembered) is None:
        return LocalFile(spec, path, remembered, read_bytes(path, content_size(spec)))
    hashes, content = hash_file(path, content_size(spec))  # inflated no further than the file's known size
    reason = mismatch_reason(spec, hashes)
    if reason is not None:
        raise DataError(f"{path}: {reason}")
    if store is not None:
        store.remember(path, hashes)
    return LocalFile(spec, path, hashes, content)


def obtain_files(spec: DatasetSpec, data: DataConfig, store: VerdictStore, log: Callable[[str], None] = to_stderr,
                 folder: DataFolder | None = None) -> tuple[DataFolder, dict[str, LocalFile]]:
    """Every file of ``spec``, verified: found in the data folder (``folder``, default :func:`data_folder`), else
    downloaded into it."""
    folder = folder if folder is not None else data_folder(data, spec.name)
    found: dict[str, LocalFile] = {}
    missing: list[FileSpec] = []
    for file_spec in spec.files:
        path = find_local(folder.path, file_spec)
        if path is None:
            missing.append(file_spec)
            continue
        try:
            found[file_spec.role] = check_file(path, file_spec, store)
        except DataError as exc:
            if folder.named_by_user:
                raise DataError(f"{exc} (not a valid {spec.name} file; left untouched: replace or delete it)") from None
            log(f"mnistgen: {exc}; deleting this cached copy and downloading it again")
            path.unlink(missing_ok=True)
            store.forget(path)
            missing.append(file_spec)
    if missing:
        what = f"{len(missing)} of {len(spec.files)} files missing from {folder}"
        if len(missing) < len(spec.files):
            what += f" ({', '.join(f.name for f in missing)})"
        if offline_requested(data):
            raise FilesUnavailable(f"{spec.name}: {what}, and offline mode is on (get them with "
                                   f"`mnistgen data fetch --dataset {spec.name}` while online)")
        mirrors = mirror_list(data, spec)
        tried = (spec.name, *mirrors)
        for file_spec in missing:
            try:
                if tried in _FAILED_DOWNLOADS:  # tried once per process: a later stage does not ask the mirrors again
                    raise DownloadError(_FAILED_DOWNLOADS[tried])
                got = download_file(file_spec, mirrors, folder.path, data.download_timeout, data.download_retries,
                                    log=log)
            except DownloadError as exc:
                _FAILED_DOWNLOADS[tried] = str(exc)
                raise FilesUnavailable(f"{spec.name}: {what}, and the download failed: {exc}") from None
            store.remember(got.path, got.hashes)
            found[file_spec.role] = LocalFile(file_spec, got.path, got.hashes, got.content, got.url)
    return folder, found


def _sample(requested: str | None = None, reason: str | None = None) -> RawData:
    """mnistgen's own sample (:mod:`.sample`), its files checked on every load; with ``requested``, standing in."""
    folder, files = sample.sample_folder(), {}
    for spec in SAMPLE_SPEC.files:
        path = folder / spec.name
        if not path.is_file():
            raise DataError(f"{path}: missing: mnistgen's MNIST sample is incomplete (reinstall mnistgen)")
        try:
            files[spec.role] = check_file(path, spec, None)
        except DataError as exc:
            raise DataError(f"{exc} (mnistgen's MNIST sample is damaged: reinstall mnistgen)") from None
    arrays = _decoded(SAMPLE_SPEC, files)
    provenance = {"dataset": SAMPLE_SPEC.name, "title": SAMPLE_SPEC.title, "sample": True,
                  "source": sample.SAMPLE_SOURCE, "license": sample.SAMPLE_LICENSE, "folder": str(folder),
                  "located_by": "mnistgen package data",
                  "files": [{"role": f.spec.role, "name": f.spec.name, "path": str(f.path), **f.hashes.to_dict()}
                            for f in files.values()],
                  "split": sample.SPLIT_DESCRIPTION, "train_size": len(arrays["train_labels"]),
                  "test_size": len(arrays["test_labels"])}
    if requested is not None:
        provenance.update(requested_dataset=requested, fallback_reason=reason)
        if requested not in _ANNOUNCED_FALLBACKS:
            _ANNOUNCED_FALLBACKS.add(requested)
            train, test = len(arrays["train_labels"]), len(arrays["test_labels"])
            to_stderr(f"mnistgen: WARNING: using the {train + test:,}-digit MNIST sample shipped with mnistgen "
                      f"({train:,} train / {test:,} test images), NOT full MNIST: {reason}. Results are not "
                      "comparable with full-MNIST numbers; run `mnistgen data fetch` to get MNIST, or pass --dataset "
                      "mnist-sample to use the sample on purpose.")
    return RawData(**arrays, provenance=provenance)


def _decoded(spec: DatasetSpec, files: dict[str, LocalFile]) -> dict[str, np.ndarray]:
    """The arrays of checksum-valid files (labels as int64), with the counts and labels they must have (guards
    registry typos and unusual copies)."""
    arrays = {}
    for file_spec in spec.files:
        local = files[file_spec.role]
        array = decode_idx(local.content, str(local.path), file_spec.magic, file_spec.item_shape)
        if len(array) != file_spec.count:
            raise DataError(f"{local.path}: {len(array)} items, expected {file_spec.count}")
        if not file_spec.is_images and len(array) and array.max() >= NUM_CLASSES:
            raise DataError(f"{local.path}: label {array.max()} outside 0-{NUM_CLASSES - 1}")
        arrays[file_spec.role] = array if file_spec.is_images else array.astype(np.int64)
    return arrays


def load_raw(data: DataConfig) -> RawData:
    """The dataset ``data.dataset`` in memory, from its folder or, for MNIST in the user cache, the sample."""
    if data.dataset == SAMPLE_SPEC.name:
        return _sample()
    spec = get_dataset(data.dataset)
    store = VerdictStore(cache_root())
    try:
        folder, files = obtain_files(spec, data, store)
    except FilesUnavailable as exc:
        if spec.name != SAMPLE_STANDS_IN_FOR or data_folder(data, spec.name).named_by_user:
            raise  # the sample stands in only where no folder was named: the user cache, with no network
        return _sample(requested=spec.name, reason=str(exc).removeprefix(f"{spec.name}: "))
    finally:
        store.save()
    arrays = _decoded(spec, files)
    provenance = {"dataset": spec.name, "title": spec.title, "sample": False, "folder": str(folder.path),
                  "located_by": folder.origin,
                  "files": [{"role": f.spec.role, "name": f.path.name, "path": str(f.path), **f.hashes.to_dict(),
                             "downloaded_from": f.downloaded_from} for f in (files[s.role] for s in spec.files)],
                  "train_size": len(arrays["train_labels"]), "test_size": len(arrays["test_labels"])}
    return RawData(**arrays, provenance=provenance)


@dataclass(frozen=True)
class FileReport:
    name: str
    ok: bool
    detail: str  # the matching MD5 when ok, else the reason

    def line(self) -> str:
        return f"OK {self.name} {self.detail}" if self.ok else f"FAIL {self.name}: {self.detail}"


def _sample_report() -> list[FileReport]:
    return [FileReport(file["name"], True, file["md5"]) for file in _sample().provenance["files"]]


def verify_files(data: DataConfig) -> tuple[DataFolder | None, list[FileReport]]:
    """Hash every file of the dataset afresh (never downloads); one report per file."""
    if data.dataset == SAMPLE_SPEC.name:
        return None, _sample_report()
    spec = get_dataset(data.dataset)
    folder = data_folder(data, spec.name)
    store = VerdictStore(cache_root())
    reports = []
    for file_spec in spec.files:
        path = find_local(folder.path, file_spec)
        if path is None:
            reports.append(FileReport(file_spec.name, False, f"missing from {folder}"))
            continue
        try:
            store.forget(path)
            reports.append(FileReport(path.name, True, check_file(path, file_spec, store).matched_md5))
        except DataError as exc:
            reports.append(FileReport(path.name, False, str(exc).removeprefix(f"{path}: ")))
    store.save()
    return folder, reports


def fetch_files(data: DataConfig, log: Callable[[str], None] = to_stderr) -> tuple[DataFolder | None, list[FileReport]]:
    """Make sure every file is present and verified, downloading what is missing (no stand-in sample)."""
    if data.dataset == SAMPLE_SPEC.name:
        return None, _sample_report()
    spec = get_dataset(data.dataset)
    store = VerdictStore(cache_root())
    try:
        folder, files = obtain_files(spec, data, store, log, data_folder(data, spec.name, create=True))
    finally:
        store.save()
    return folder, [FileReport(files[f.role].path.name, True, files[f.role].matched_md5) for f in spec.files]
