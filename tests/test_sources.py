"""Where data comes from: folder resolution, the remembered verdicts, offline use and the bundled sample."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket

import numpy as np
import pytest

from mnistgen.config import DataConfig
from mnistgen.data import integrity, sources
from mnistgen.data.cache import VerdictStore, cache_root
from mnistgen.data.registry import SAMPLE_SPEC, DatasetSpec, FileSpec
from mnistgen.errors import DataError

WARNING_MARK = "mnistgen: WARNING: using the 5,000-digit MNIST sample shipped with mnistgen"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in (sources.DATA_DIR_ENV, sources.OFFLINE_ENV, "MNISTGEN_MIRRORS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "_ANNOUNCED_FALLBACKS", set())  # each test sees its own "first" warning
    monkeypatch.setattr(sources, "_FAILED_DOWNLOADS", {})  # and its own first download


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens here once the probe is closed


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "WARNING" in line]


# --------------------------------------------------------------------------- resolution order


def test_data_dir_then_environment_then_user_cache(tmp_path, monkeypatch):
    assert sources.data_folder(DataConfig(), "kmnist").path == tmp_path / "cache" / "kmnist"
    assert sources.data_folder(DataConfig(), "kmnist").origin == "user cache"
    (tmp_path / "env").mkdir()
    (tmp_path / "flag").mkdir()
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env"))
    assert sources.data_folder(DataConfig(), "kmnist").path == tmp_path / "env"
    given = sources.data_folder(DataConfig(data_dir=str(tmp_path / "flag")), "kmnist")
    assert (given.path, given.origin) == (tmp_path / "flag", "--data-dir")


def test_cache_root_without_override_is_the_platform_user_cache(monkeypatch):
    import platformdirs

    monkeypatch.delenv("MNISTGEN_CACHE_DIR")
    assert str(cache_root()) == platformdirs.user_cache_dir("mnistgen", appauthor=False)


def test_data_dir_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        sources.data_folder(DataConfig(data_dir=str(tmp_path / "file")), "mnist")


@pytest.mark.parametrize(("word", "offline"), [("1", True), ("TRUE", True), ("yes", True), ("0", False),
                                               ("false", False), ("", False)])
def test_offline_environment_variable(monkeypatch, word, offline):
    monkeypatch.setenv(sources.OFFLINE_ENV, word)
    assert sources.offline_requested(DataConfig()) is offline
    assert sources.offline_requested(DataConfig(offline=True)) is True


def test_offline_environment_variable_rejects_other_words(monkeypatch):
    monkeypatch.setenv(sources.OFFLINE_ENV, "maybe")
    with pytest.raises(DataError, match=r"\$MNISTGEN_OFFLINE must be 1 or 0"):
        sources.offline_requested(DataConfig())


# --------------------------------------------------------------------------- verified once


def toy_files(folder):
    """A two-file dataset written to ``folder``: one gzip (as served), one stored uncompressed."""
    content = bytes([0, 0, 8, 1]) + np.array([3], ">u4").tobytes() + bytes([1, 2, 3])
    packed = gzip.compress(content, mtime=0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a-labels-idx1-ubyte.gz").write_bytes(packed)
    (folder / "b-labels-idx1-ubyte").write_bytes(content)  # found under the name without .gz
    md5 = hashlib.md5(content).hexdigest()
    files = (FileSpec("train_labels", "a-labels-idx1-ubyte.gz", hashlib.md5(packed).hexdigest(), None, 3),
             FileSpec("test_labels", "b-labels-idx1-ubyte.gz", None, md5, 3))
    return DatasetSpec("toy", "Toy", files, ("http://127.0.0.1:1/",), tuple("0123456789"))


def test_files_are_hashed_once_then_the_verdict_is_reused(tmp_path, monkeypatch):
    spec = toy_files(tmp_path / "d")
    data = DataConfig(data_dir=str(tmp_path / "d"), offline=True)
    store = VerdictStore(tmp_path / "cache")
    _, files = sources.obtain_files(spec, data, store)
    store.save()
    assert files["test_labels"].path.name == "b-labels-idx1-ubyte"
    assert files["test_labels"].hashes.md5 == files["test_labels"].hashes.content_md5  # uncompressed file

    def no_hashing(*args):
        raise AssertionError("hashed again")

    monkeypatch.setattr(integrity, "md5_hex", no_hashing)
    _, again = sources.obtain_files(spec, data, VerdictStore(tmp_path / "cache"))
    assert {r: f.hashes for r, f in again.items()} == {r: f.hashes for r, f in files.items()}
    assert again["train_labels"].content == files["train_labels"].content

    # A file changed since (new mtime) is hashed again: here, the hashing is what fails.
    path = tmp_path / "d" / "a-labels-idx1-ubyte.gz"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="hashed again"):
        sources.obtain_files(spec, data, VerdictStore(tmp_path / "cache"))


def test_a_remembered_verdict_is_not_valid_for_another_dataset(tmp_path):
    spec = toy_files(tmp_path / "d")
    store = VerdictStore(tmp_path / "cache")
    sources.obtain_files(spec, DataConfig(data_dir=str(tmp_path / "d"), offline=True), store)
    other = DatasetSpec("other", "Other", (FileSpec("train_labels", "a-labels-idx1-ubyte.gz", "0" * 32, None, 3),),
                        (), ())
    with pytest.raises(DataError, match="checksum mismatch: MD5 .* expected 0{32}"):
        sources.obtain_files(other, DataConfig(data_dir=str(tmp_path / "d"), offline=True), store)


def test_damaged_verdict_file_is_ignored(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "verified.json").write_text("{not json")
    spec = toy_files(tmp_path / "d")
    store = VerdictStore(tmp_path / "cache")
    sources.obtain_files(spec, DataConfig(data_dir=str(tmp_path / "d"), offline=True), store)
    store.save()
    assert VerdictStore(tmp_path / "cache").lookup(tmp_path / "d" / "a-labels-idx1-ubyte.gz") is not None


def test_missing_files_offline_are_one_line_naming_them(tmp_path):
    spec = toy_files(tmp_path / "d")
    (tmp_path / "d" / "b-labels-idx1-ubyte").unlink()
    with pytest.raises(sources.FilesUnavailable) as info:
        sources.obtain_files(spec, DataConfig(data_dir=str(tmp_path / "d"), offline=True),
                             VerdictStore(tmp_path / "c"))
    assert str(info.value) == (
        f"toy: 1 of 2 files missing from {tmp_path / 'd'} (--data-dir) (b-labels-idx1-ubyte.gz), and offline mode "
        f"is on (get them with `mnistgen data fetch --dataset toy` while online)"
    )


def test_a_named_folder_must_exist_but_data_fetch_may_create_it(tmp_path, monkeypatch):
    """A mistyped --data-dir or $MNISTGEN_DATA_DIR is one error naming it, never the sample in its place; only
    `data fetch`, told to fill the folder, creates it."""
    missing = tmp_path / "typo"
    with pytest.raises(DataError, match=r"typo \(--data-dir\): no such folder .*mnistgen data fetch --data-dir"):
        sources.load_raw(DataConfig(data_dir=str(missing), offline=True))
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(missing))
    with pytest.raises(DataError, match=r"\(\$MNISTGEN_DATA_DIR\): no such folder"):
        sources.load_raw(DataConfig(offline=True))
    assert not missing.exists()
    with pytest.raises(DataError, match="4 of 4 files missing from .*typo.*offline mode is on"):
        sources.fetch_files(DataConfig(offline=True))  # fetch may fill a new folder: its reason is another


def test_a_named_folder_without_the_files_is_an_error_not_the_sample(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="4 of 4 files missing from .*empty.*offline mode is on"):
        sources.load_raw(DataConfig(data_dir=str(tmp_path / "empty"), offline=True))
    assert "WARNING" not in capsys.readouterr().err


# --------------------------------------------------------------------------- offline: the sample


def test_offline_mnist_without_files_uses_the_sample_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)  # the sample stands in only in the user cache
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    raw = sources.load_raw(DataConfig())
    err = capsys.readouterr().err
    assert len(warning_lines(err)) == 1 and warning_lines(err)[0].startswith(WARNING_MARK)
    assert "offline mode is on" in warning_lines(err)[0] and "--dataset mnist-sample" in err
    assert raw.train_images.shape == (4000, 28, 28) and raw.test_images.shape == (1000, 28, 28)
    prov = raw.provenance
    assert prov["dataset"] == "mnist-sample" and prov["sample"] is True and prov["requested_dataset"] == "mnist"
    assert "offline mode is on" in prov["fallback_reason"] and str(tmp_path / "empty") in prov["fallback_reason"]
    assert [f["name"] for f in prov["files"]] == [f.name for f in SAMPLE_SPEC.files]
    assert [f["md5"] for f in prov["files"]] == [f.gz_md5 for f in SAMPLE_SPEC.files]


def test_unreachable_mirrors_use_the_sample_in_one_line(tmp_path, monkeypatch, capsys):
    """Every mirror on a closed port of 127.0.0.1: refused at once, no waiting for timeouts. One line says where
    mnistgen looked, that the network is unreachable and what it uses instead, with no exception text."""
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)  # the sample stands in only in the user cache
    port = closed_port()
    mirrors = f"http://127.0.0.1:{port}/a/, http://127.0.0.1:{port}/b/"
    monkeypatch.setenv("MNISTGEN_MIRRORS", mirrors.replace(" ", ""))
    raw = sources.load_raw(DataConfig())
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(WARNING_MARK)
    reason = (f"4 of 4 files missing from {tmp_path / 'empty' / 'mnist'} (user cache), and the download failed: the "
              f"network is unreachable (no answer from {mirrors})")
    assert reason in line and "Errno" not in line and "refused" not in line
    assert raw.provenance["dataset"] == "mnist-sample" and raw.provenance["fallback_reason"] == reason
    assert not any((tmp_path / "empty" / "mnist").iterdir())  # nothing partial left behind


@pytest.mark.parametrize("mirror", ["closed port", "refusing server"])
def test_a_failed_download_is_not_tried_again_by_a_later_stage(tmp_path, monkeypatch, capsys, mirror, connections):
    """What the stages of a reproduction do without MNIST: training loads the data (and gets the sample), the
    evaluation loads it again, the score looks for MNIST's files. Only the first asks the mirrors, once each."""
    from test_download import Server

    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "empty"))
    server = Server({}) if mirror == "refusing server" else None  # answers 404 to every file
    try:
        url = server.url("e404") if server else f"http://127.0.0.1:{closed_port()}/"
        monkeypatch.setenv("MNISTGEN_MIRRORS", url)
        data = DataConfig(download_retries=0)
        first, second = sources.load_raw(data), sources.load_raw(data)
        with pytest.raises(sources.FilesUnavailable) as info:
            sources.obtain_files(sources.get_dataset("mnist"), data, VerdictStore(cache_root()))
    finally:
        if server:
            server.stop()
    assert len(connections) == 1, connections
    assert server is None or server.requests == ["e404/train-images-idx3-ubyte.gz"]
    assert first.provenance == second.provenance and str(info.value) == f"mnist: {first.provenance['fallback_reason']}"
    assert len(warning_lines(capsys.readouterr().err)) == 1


def test_the_warning_is_printed_once_per_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)  # the sample stands in only in the user cache
    data = DataConfig(offline=True)
    first, second = sources.load_raw(data), sources.load_raw(data)
    assert len(warning_lines(capsys.readouterr().err)) == 1
    assert first.provenance == second.provenance


def test_sample_chosen_on_purpose_is_silent(capsys):
    raw = sources.load_raw(DataConfig(dataset="mnist-sample"))
    assert capsys.readouterr().err == ""
    assert raw.provenance["dataset"] == "mnist-sample" and "requested_dataset" not in raw.provenance


@pytest.mark.parametrize("dataset", ["fashion-mnist", "kmnist"])
def test_other_datasets_have_no_stand_in(tmp_path, capsys, dataset):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        sources.load_raw(DataConfig(dataset=dataset, data_dir=str(tmp_path / "empty"), offline=True))
    message = str(info.value)
    assert message.startswith(f"{dataset}: 4 of 4 files missing from") and "offline mode is on" in message
    assert "\n" not in message and "WARNING" not in capsys.readouterr().err


def test_corrupt_mnist_file_is_an_error_not_a_reason_for_the_sample(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\0"))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: checksum mismatch"):
        sources.load_raw(DataConfig(data_dir=str(tmp_path / "d"), offline=True))


# --------------------------------------------------------------------------- the sample itself

# In tests/test_sample.py: its balance, checksums, provenance, the script that makes it and the real images it holds.
