"""``mnistgen data fetch | verify | info`` as a user runs them."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistgen.cli import main

SPEC_MD5 = {  # SPEC §1
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("MNISTGEN_DATA_DIR", "MNISTGEN_OFFLINE", "MNISTGEN_MIRRORS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mnist_copy(mnist_dir, tmp_path) -> Path:
    copy = tmp_path / "mnist"
    copy.mkdir()
    for name in SPEC_MD5:
        shutil.copy(mnist_dir / name, copy / name)
    return copy


def test_verify_prints_one_ok_line_per_file(mnist_dir, capsys):
    assert main(["data", "verify", "--data-dir", str(mnist_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK {name} {md5}" for name, md5 in SPEC_MD5.items()]


def _flip_a_content_byte(path: Path) -> None:
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[len(content) // 2] ^= 0x01
    path.write_bytes(gzip.compress(bytes(content), compresslevel=1))  # a valid gzip, wrong content


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1000])


@pytest.mark.parametrize(("name", "corrupt", "reason"), [
    ("t10k-labels-idx1-ubyte.gz", _flip_a_content_byte, "checksum mismatch: content MD5"),
    ("train-images-idx3-ubyte.gz", _truncate, "corrupt or truncated gzip data"),
    ("t10k-images-idx3-ubyte.gz", lambda p: p.unlink(), "missing from"),
], ids=["flipped-bit", "truncated", "missing"])
def test_verify_names_the_one_bad_file(mnist_copy, capsys, name, corrupt, reason):
    corrupt(mnist_copy / name)
    assert main(["data", "verify", "--data-dir", str(mnist_copy)]) == 1
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    naming = [line for line in lines if name in line]
    assert len(naming) == 1 and naming[0].startswith(f"FAIL {name}: ") and reason in naming[0]
    assert sorted(line for line in lines if line.startswith("OK ")) == sorted(
        f"OK {n} {md5}" for n, md5 in SPEC_MD5.items() if n != name)


def test_verify_as_an_installed_command(mnist_dir, tmp_path):
    """The console script itself (no torch import needed, so this is quick)."""
    script = Path(sys.executable).with_name("mnistgen")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mnistgen"]
    result = subprocess.run([*command, "data", "verify", "--data-dir", str(mnist_dir)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.splitlines() == [f"OK {name} {md5}" for name, md5 in SPEC_MD5.items()]


def test_fetch_with_everything_present_downloads_nothing(mnist_copy, capsys):
    assert main(["data", "fetch", "--data-dir", str(mnist_copy), "--mirrors", "http://127.0.0.1:9/"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[:4] == [f"OK {name} {md5}" for name, md5 in SPEC_MD5.items()]
    assert out.splitlines()[4] == f"mnist: 4 file(s) present and verified in {mnist_copy} (--data-dir)"
    assert "downloading" not in err


def test_fetch_downloads_the_missing_file_from_a_mirror(mnist_dir, mnist_copy, capsys):
    import http.server
    import threading
    from functools import partial

    (mnist_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(mnist_dir))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        assert main(["data", "fetch", "--data-dir", str(mnist_copy), "--mirrors", url]) == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    out, err = capsys.readouterr()
    assert "OK t10k-labels-idx1-ubyte.gz 27ae3e4e09519cfbb04c329615203637" in out.splitlines()
    assert f"downloading t10k-labels-idx1-ubyte.gz from {url}t10k-labels-idx1-ubyte.gz" in err
    assert (mnist_copy / "t10k-labels-idx1-ubyte.gz").read_bytes() == (mnist_dir / "t10k-labels-idx1-ubyte.gz"
                                                                      ).read_bytes()


def test_fetch_offline_without_files_is_one_error_line_and_no_sample(tmp_path, capsys):
    assert main(["data", "fetch", "--data-dir", str(tmp_path), "--offline"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"mnistgen: error: mnist: 4 of 4 files missing from {tmp_path} (--data-dir), and offline mode is on "
        f"(get them with `mnistgen data fetch --dataset mnist` while online)"
    ]


def test_info_on_real_mnist(mnist_dir, tmp_path, capsys):
    out_png = tmp_path / "grid.png"
    assert main(["data", "info", "--data-dir", str(mnist_dir), "--out", str(out_png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dataset   MNIST (mnist) from {mnist_dir.resolve()} (--data-dir)"
    assert lines[1].startswith("train     60,000 images 28x28, pixel/255 mean 0.1307 std 0.3081; labels 0:5923 1:6742")
    assert lines[2].startswith("test      10,000 images 28x28") and lines[2].endswith("8:974 9:1009")
    assert lines[3].startswith(f"examples  {out_png}")
    assert Image.open(out_png).size == (604, 604)  # 10 x (28 + 2) + 2 pixels, enlarged twice


def test_info_grid_rows_are_classes(tmp_path, capsys, monkeypatch):
    """Default location in the user cache; cell (row k, column j) is the j-th training image of class k."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(cache))
    assert main(["data", "info", "--dataset", "mnist-sample"]) == 0
    assert capsys.readouterr().err == ""
    grid = np.asarray(Image.open(cache / "figures" / "mnist-sample-examples.png"), dtype=np.float64) / 255.0
    from mnistgen.config import DataConfig
    from mnistgen.data.sources import load_raw

    raw = load_raw(DataConfig(dataset="mnist-sample"))
    for digit, column in ((0, 0), (7, 3), (9, 9)):
        image = raw.train_images[np.flatnonzero(raw.train_labels == digit)[column]] / 255.0
        top, left = 2 * (2 + digit * 30), 2 * (2 + column * 30)  # padding 2, cell 28 + 2, scale 2
        cell = grid[top:top + 56:2, left:left + 56:2]
        np.testing.assert_allclose(cell, image, atol=1 / 255)
