"""Downloads against a real HTTP server on 127.0.0.1, started and stopped by the tests.

The server serves small synthetic IDX files (and, for one end-to-end test, the real MNIST files)
under a path prefix that picks its behaviour: ``/good/``, ``/e500/`` (HTTP 500), ``/e404/``,
``/stall/`` (headers and half the body, then silence), ``/hang/`` (silence before any header),
``/cut/`` (Content-Length of the whole file, half the body, then the connection closes), ``/bad/``
(a valid gzip of other content), ``/flaky/`` (500 on the first request, then good) and ``/nolength/``
(no Content-Length: the body ends when the connection closes).

Memory is measured in a fresh Python (:func:`test_idx.run_measured`), so that the test process's own
memory does not blur the number.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import shutil
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from test_idx import MEMORY_BUDGET_MB, MNIST_TRAIN, run_measured, write_gzip_bomb

from mnistgen import files
from mnistgen.config import DataConfig
from mnistgen.data import download, sources
from mnistgen.data.cache import VerdictStore
from mnistgen.data.download import DownloadError, download_file, mirror_list
from mnistgen.data.integrity import content_size, stored_size_limit
from mnistgen.data.registry import DATASETS, DatasetSpec, FileSpec
from mnistgen.errors import DataError

TIMEOUT = 0.3  # seconds; the stall tests wait this long once per stalled mirror


# --------------------------------------------------------------------------- synthetic files and server


def idx_gz(seed: int, count: int = 6) -> tuple[bytes, bytes]:
    content = bytes([0, 0, 8, 3]) + np.array([count, 28, 28], ">u4").tobytes()
    content += np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8).tobytes()
    return content, gzip.compress(content, mtime=0)


TOY_CONTENT, TOY_GZ = idx_gz(1)
OTHER_CONTENT, OTHER_GZ = idx_gz(2)
TOY = FileSpec("train_images", "toy-images-idx3-ubyte.gz", hashlib.md5(TOY_GZ).hexdigest(),
               hashlib.md5(TOY_CONTENT).hexdigest(), 6)


class Server:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []  # "mode/name" in arrival order
        self.release = threading.Event()  # set at teardown: stalled handlers return at once
        self._flaky_seen: set[str] = set()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                mode, _, name = self.path.lstrip("/").partition("/")
                owner.requests.append(f"{mode}/{name}")
                body = owner.files.get(name)
                if body is None or mode == "e404":
                    return self.send_error(404)
                if mode == "e500" or (mode == "flaky" and name not in owner._flaky_seen):
                    owner._flaky_seen.add(name)
                    return self.send_error(500)
                if mode == "hang":
                    owner.release.wait(10)
                    return None
                if mode == "bad":
                    body = OTHER_GZ
                self.send_response(200)
                if mode != "nolength":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode in ("stall", "cut"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if mode == "stall":
                        owner.release.wait(10)
                    self.close_connection = True
                    return None
                self.wfile.write(body)
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/"

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = Server({TOY.name: TOY_GZ})
    yield running
    running.stop()


def fetch(server: Server, modes: list[str], folder: Path, retries: int = 0, log=None):
    lines = [] if log is None else log
    return download_file(TOY, [server.url(m) for m in modes], folder, timeout=TIMEOUT, retries=retries,
                         backoff=0.01, log=lines.append)


def assert_only(folder: Path, names: set[str]):
    assert {p.name for p in folder.iterdir()} == names  # in particular no .part file


# --------------------------------------------------------------------------- mirrors, in order


def test_good_mirror_delivers_the_exact_file(server, tmp_path):
    got = fetch(server, ["good"], tmp_path)
    assert got.path == tmp_path / TOY.name and got.path.read_bytes() == TOY_GZ
    assert got.content == TOY_CONTENT and got.hashes.md5 == TOY.gz_md5
    assert_only(tmp_path, {TOY.name})


@pytest.mark.parametrize("first", ["e500", "e404", "stall", "hang"])
def test_falls_back_to_the_next_mirror(server, tmp_path, first):
    log = []
    got = fetch(server, [first, "good"], tmp_path, log=log)
    assert got.path.read_bytes() == TOY_GZ and got.url == server.url("good") + TOY.name
    assert server.requests == [f"{first}/{TOY.name}", f"good/{TOY.name}"]
    reason = {"e500": "HTTP 500", "e404": "HTTP 404", "stall": "stalled", "hang": "stalled"}[first]
    assert any(server.url(first) in line and reason in line for line in log)
    assert_only(tmp_path, {TOY.name})


def test_server_error_is_retried_in_a_later_round_but_404_and_stall_are_not(server, tmp_path):
    got = fetch(server, ["e404", "stall", "flaky"], tmp_path, retries=2)
    assert got.url == server.url("flaky") + TOY.name
    assert server.requests == [f"e404/{TOY.name}", f"stall/{TOY.name}", f"flaky/{TOY.name}", f"flaky/{TOY.name}"]


def test_every_mirror_failing_is_one_data_error_listing_them(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        fetch(server, ["e500", "e404"], tmp_path, retries=1)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{TOY.name}: no mirror delivered it")
    assert "HTTP 500" in message and "HTTP 404" in message
    assert server.requests.count(f"e500/{TOY.name}") == 2 and server.requests.count(f"e404/{TOY.name}") == 1
    assert_only(tmp_path, set())


@pytest.fixture
def closed_port():
    """A port of 127.0.0.1 bound but not listening for the test's duration: every connection to it is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


def test_no_mirror_reached_is_one_short_reason_and_no_line_per_mirror(closed_port, tmp_path):
    """No network: the error says so and names the mirrors, with no exception text and no log line per mirror."""
    mirrors = [f"http://127.0.0.1:{closed_port}/a/", f"http://127.0.0.1:{closed_port}/b/"]
    log = []
    with pytest.raises(DownloadError) as info:
        download_file(TOY, mirrors, tmp_path, timeout=TIMEOUT, retries=2, backoff=0.01, log=log.append)
    assert str(info.value) == f"the network is unreachable (no answer from {mirrors[0]}, {mirrors[1]})"
    assert log == []
    assert_only(tmp_path, set())


def test_a_mirror_that_answered_is_named_beside_one_not_reached(server, closed_port, tmp_path):
    unreached = f"http://127.0.0.1:{closed_port}/"
    log = []
    with pytest.raises(DownloadError) as info:
        download_file(TOY, [unreached, server.url("e404")], tmp_path, timeout=TIMEOUT, retries=0, log=log.append)
    assert str(info.value) == (f"{TOY.name}: no mirror delivered it ({unreached}{TOY.name}: no answer; "
                               f"{server.url('e404')}{TOY.name}: HTTP 404 Not Found)")
    assert log == [f"mnistgen: {server.url('e404')}{TOY.name}: HTTP 404 Not Found"]


# --------------------------------------------------------------------------- integrity


def test_wrong_checksum_is_rejected_and_nothing_is_kept(server, tmp_path):
    with pytest.raises(DownloadError, match=f"content MD5 {hashlib.md5(OTHER_CONTENT).hexdigest()}, "
                                           f"expected {TOY.content_md5}"):
        fetch(server, ["bad"], tmp_path, retries=2)
    assert server.requests == [f"bad/{TOY.name}"]  # a wrong checksum is not retried
    assert_only(tmp_path, set())


def test_wrong_checksum_then_good_mirror(server, tmp_path):
    got = fetch(server, ["bad", "good"], tmp_path)
    assert got.path.read_bytes() == TOY_GZ


@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_interrupted_transfer_leaves_no_partial_file(server, tmp_path, mode):
    with pytest.raises(DownloadError, match="cut off after" if mode == "cut" else "stalled"):
        fetch(server, [mode], tmp_path)
    assert_only(tmp_path, set())


def test_cut_transfer_is_retried(server, tmp_path):
    with pytest.raises(DownloadError):
        fetch(server, ["cut"], tmp_path, retries=1)
    assert server.requests == [f"cut/{TOY.name}"] * 2


def test_ctrl_c_during_a_transfer_leaves_no_partial_file(server, tmp_path, monkeypatch):
    class Interrupting:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "_progress_bar", lambda total, name: Interrupting())
    with pytest.raises(KeyboardInterrupt):
        fetch(server, ["good"], tmp_path)
    assert_only(tmp_path, set())


def test_existing_good_file_is_replaced_only_by_a_verified_one(server, tmp_path):
    (tmp_path / TOY.name).write_bytes(b"previous")
    with pytest.raises(DownloadError):
        fetch(server, ["bad"], tmp_path)
    assert (tmp_path / TOY.name).read_bytes() == b"previous"


# --------------------------------------------------------------------------- bounded memory and disk


_DOWNLOAD = """
spec = registry.DATASETS["mnist"].file("train_images")
try:
    download.download_file(spec, [sys.argv[2]], sys.argv[3], timeout=10, retries=2, backoff=0.01, log=print)
    print("downloaded")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_gzip_bomb_from_a_mirror_is_rejected_in_bounded_memory(tmp_path):
    """1 MB served for MNIST's training images that inflates to 1 GiB: inflated no further than those 47 MB."""
    bomb = write_gzip_bomb(tmp_path / "bomb.gz")
    running = Server({MNIST_TRAIN.name: bomb.read_bytes()})
    try:
        before, after, lines = run_measured(_DOWNLOAD, running.url("good"), str(tmp_path / "data"))
    finally:
        running.stop()
    assert after - before < MEMORY_BUDGET_MB, f"peak memory rose from {before:.0f} MB to {after:.0f} MB"
    url = running.url("good") + MNIST_TRAIN.name
    reason = f"inflates to more than the {content_size(MNIST_TRAIN)} bytes expected (reading stopped there)"
    assert lines[-1] == f"DownloadError: {MNIST_TRAIN.name}: no mirror delivered it ({url}: {reason})"
    assert running.requests == [f"good/{MNIST_TRAIN.name}"]  # the wrong file is not asked for again
    assert_only(tmp_path / "data", set())  # no .part file left


@pytest.mark.parametrize("mode", ["good", "nolength"])
def test_body_larger_than_any_copy_of_the_file_is_refused(tmp_path, mode):
    """A body bigger than the file can be, compressed or not, is refused as declared or cut off as soon as it
    passes that size (disk stays bounded); not retried."""
    running = Server({TOY.name: bytes(1 << 20)})
    try:
        with pytest.raises(DownloadError) as info:
            fetch(running, [mode], tmp_path, retries=2)
    finally:
        running.stop()
    limit = stored_size_limit(TOY)
    said = f"serves {1 << 20} bytes, more" if mode == "good" else "sent more"
    assert f"{said} than the {limit} bytes a copy of {TOY.name} can have" in str(info.value)
    assert running.requests == [f"{mode}/{TOY.name}"]
    assert_only(tmp_path, set())


# --------------------------------------------------------------------------- the file rules


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_downloaded_file_has_the_permissions_of_every_output(server, tmp_path, umask):
    previous = os.umask(umask)
    try:
        got = fetch(server, ["good"], tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(got.path.stat().st_mode) == 0o666 & ~umask


def test_folder_is_flushed_after_the_rename(server, tmp_path, monkeypatch):
    synced = []
    real_sync = files.sync_folder

    def recording(folder):
        synced.append((Path(folder), {p.name for p in Path(folder).iterdir()}))
        real_sync(folder)

    monkeypatch.setattr(files, "sync_folder", recording)
    fetch(server, ["good"], tmp_path)
    assert synced == [(tmp_path, {TOY.name})]  # after the rename: the file is there, no .part beside it


def test_local_file_system_failure_is_not_blamed_on_the_mirror(server, tmp_path):
    """The target cannot be written (here a folder has its name): one DataError naming it, no other mirror tried."""
    (tmp_path / TOY.name).mkdir()
    with pytest.raises(DataError) as info:
        fetch(server, ["good", "good"], tmp_path, retries=2)
    message = str(info.value)
    assert not isinstance(info.value, DownloadError) and "\n" not in message
    assert message.startswith(f"cannot write {tmp_path / TOY.name}: ")
    assert server.requests == [f"good/{TOY.name}"]
    assert_only(tmp_path, {TOY.name})  # the folder, and no .part file


# --------------------------------------------------------------------------- mirror list


def test_mirror_list_precedence_and_validation(monkeypatch):
    spec = DATASETS["mnist"]
    monkeypatch.delenv(download.MIRRORS_ENV, raising=False)
    assert mirror_list(DataConfig(), spec) == list(spec.mirrors)
    monkeypatch.setenv(download.MIRRORS_ENV, "http://127.0.0.1:1/a, http://127.0.0.1:1/b/")
    assert mirror_list(DataConfig(), spec) == ["http://127.0.0.1:1/a/", "http://127.0.0.1:1/b/"]
    assert mirror_list(DataConfig(mirrors="file:///srv/mnist"), spec) == ["file:///srv/mnist/"]
    with pytest.raises(DataError, match="--mirrors: 'ftp://x' is not an http"):
        mirror_list(DataConfig(mirrors="ftp://x"), spec)
    monkeypatch.setenv(download.MIRRORS_ENV, " , ")
    with pytest.raises(DataError, match=r"\$MNISTGEN_MIRRORS is set but names no URL"):
        mirror_list(DataConfig(), spec)


# --------------------------------------------------------------------------- through the data layer


def toy_dataset(server: Server) -> DatasetSpec:
    return DatasetSpec("toy", "Toy", (TOY,), (server.url("good"),), tuple("0123456789"))


def test_damaged_file_in_the_cache_is_downloaded_again(server, tmp_path, monkeypatch):
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path))
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / TOY.name).write_bytes(OTHER_GZ)
    log = []
    folder, files = sources.obtain_files(toy_dataset(server), DataConfig(), VerdictStore(tmp_path), log.append)
    assert folder.path == tmp_path / "toy" and folder.origin == "user cache"
    assert (tmp_path / "toy" / TOY.name).read_bytes() == TOY_GZ
    assert files["train_images"].downloaded_from == server.url("good") + TOY.name
    assert any("deleting this cached copy" in line for line in log)


def test_damaged_file_in_a_named_folder_is_an_error_and_left_alone(server, tmp_path):
    (tmp_path / TOY.name).write_bytes(OTHER_GZ)
    data = DataConfig(data_dir=str(tmp_path))
    with pytest.raises(DataError) as info:
        sources.obtain_files(toy_dataset(server), data, VerdictStore(tmp_path / "cache"))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / TOY.name}: checksum mismatch") and "left untouched" in message
    assert (tmp_path / TOY.name).read_bytes() == OTHER_GZ and server.requests == []


@pytest.fixture
def real_server(mnist_dir):
    running = Server({p.name: p.read_bytes() for p in mnist_dir.glob("*.gz")})
    yield running
    running.stop()


def test_mnist_downloads_from_local_mirrors_and_matches_the_real_files(real_server, mnist_raw, tmp_path):
    """End to end: an empty --data-dir, a failing first mirror, the real MNIST files from the second."""
    target = tmp_path / "mnist"
    target.mkdir()  # a folder named with --data-dir must exist
    data = DataConfig(data_dir=str(target), mirrors=f"{real_server.url('e500')},{real_server.url('good')}",
                      download_retries=0)
    raw = sources.load_raw(data)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(raw, field), getattr(mnist_raw, field))
    assert sorted(p.name for p in target.iterdir()) == sorted(f.name for f in DATASETS["mnist"].files)
    for entry in raw.provenance["files"]:
        assert entry["downloaded_from"] == real_server.url("good") + entry["name"]
        assert entry["content_md5"] == DATASETS["mnist"].file(entry["role"]).content_md5
    # Now on disk and verified: an offline load needs no server at all.
    requests_before = len(real_server.requests)
    again = sources.load_raw(DataConfig(data_dir=str(target), offline=True))
    assert len(real_server.requests) == requests_before
    assert again.provenance["files"][0]["downloaded_from"] is None
    shutil.rmtree(target)
