"""Faults that must end in one line on stderr and a non-zero exit, with nothing written.

- ``score`` of a .npy whose header claims 100 million images: refused from the header against the file's size,
  before anything is allocated (checked in a process whose address space is capped at a few GB);
- ``score`` of a 2.9 MB .npz whose member inflates to 3 GB: refused from the member's header by the bytes it declares,
  before anything is allocated (in the same capped process);
- ``score`` with no MNIST to be had: only the real reason, not the stand-in sample's warning (which names a
  ``--dataset`` flag ``score`` does not have) followed by the refusal, nor a line per mirror not reached;
- ``score`` of float pixel levels 0-255: the hint to divide them by 255;
- a truncated checkpoint: what to do about it (and doing that works);
- ``sample --out MISSING/z.npy``: refused, the folder is not created;
- a read-only output folder, for ``score`` and ``sample``: refused before the work, not after it. The folder is
  made read-only in a way that holds for root too (mode 555, and the immutable attribute where the tests run as
  root, whom mode bits do not stop); where that cannot be done the test is skipped, saying why;
- ``report`` on a folder whose score.json is not what ``score`` writes (strings for numbers, not an object, a key
  missing): one line naming the file, no page written.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_support import GAN_SCORE, make_reproduction

from mnistgen.cli import main
from mnistgen.errors import MnistgenError
from mnistgen.runs import RunDir
from mnistgen.scoring import check_images, score_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNREACHABLE_MIRROR = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused at once


def images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(n, 28, 28)).astype(np.float32)


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors exit through SystemExit
        return exc.code


def error_line(capsys, code: int) -> str:
    """The one stderr line of a failed command: exit 1, exactly one line starting ``mnistgen: error:``."""
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnistgen: error: "), err
    return lines[0]


def forbid(monkeypatch, module, name: str) -> None:
    """Make ``module.name`` fail the test if called: the work it starts must not begin."""
    def called(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} was called: the work started before the output was checked")

    monkeypatch.setattr(module, name, called)


@pytest.fixture
def read_only(tmp_path):
    """``read_only(folder)`` makes ``folder`` unwritable for this process, root included: mode 555 stops other users,
    and for root the immutable attribute (chattr +i), which the kernel enforces for everyone. Skips the test where
    the folder stays writable (root on a file system without that attribute, or without the capability)."""
    locked: list[tuple[Path, bool]] = []

    def lock(folder: Path) -> Path:
        folder.chmod(0o555)
        immutable = False
        if getattr(os, "geteuid", lambda: -1)() == 0 and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        locked.append((folder, immutable))
        probe = folder / ".probe"
        try:
            probe.touch()
        except OSError:
            return folder
        probe.unlink()
        pytest.skip(f"cannot make a folder read-only for this user here ({folder} stays writable: root, and "
                    "chattr +i is not available on this file system)")

    yield lock
    for folder, immutable in locked:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


# --------------------------------------------------------------------------- score: a header claiming too much


def score_in_capped_process(path) -> subprocess.CompletedProcess:
    """`mnistgen score PATH --device cpu` in a process limited to 3 GiB of address space."""
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
              "from mnistgen.cli import main\n"
              f"sys.exit(main(['score', {str(path)!r}, '--device', 'cpu']))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype", ["|u1", "<f4"])
def test_score_refuses_a_header_claiming_100_million_images_before_allocating(tmp_path, dtype):
    """(100,000,000, 28, 28): 78 GB as uint8, 314 GB as float32, in a file of a few bytes. np.load would allocate it
    first: in a process limited to 3 GiB of address space that is a MemoryError (a traceback) before the fix."""
    path = tmp_path / "huge.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": dtype, "fortran_order": False,
                                                      "shape": (100_000_000, 28, 28)})
        handle.write(bytes(64))
    result = score_in_capped_process(path)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("mnistgen: error: "), result.stderr
    assert f"{path}: not a .npy file (its header claims an array of shape (100000000, 28, 28)" in lines[0]
    assert "but only 64 follow it" in lines[0]
    assert not score_path(path).exists()


def write_npz_bomb(path: Path, shape: tuple[int, ...], descr: str = "<f8") -> Path:
    """An .npz of one member, images.npy: a header declaring ``shape`` of ``descr``, then that many bytes of zeros,
    deflated to about 1/1000 of them. Built in a second and in little memory: the zeros are deflated 16 MiB at a time
    with a full flush, which resets the compressor, so every full 16 MiB block deflates to the same bytes."""
    import struct
    import zlib

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    head, block = header.getvalue(), 1 << 24
    size = len(head) + math.prod(shape) * np.dtype(descr).itemsize
    rest = size - min(block, size)
    pieces = [head + bytes(min(block, size) - len(head)), *[bytes(block)] * (rest // block), bytes(rest % block)]
    deflated, crc, known = [], 0, {}
    for index, piece in enumerate(pieces):
        key = len(piece) if index else -1  # the header's block, and each length of zeros, deflated once
        if key not in known:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            known[key] = compressor.compress(piece) + compressor.flush(zlib.Z_FULL_FLUSH)
        deflated.append(known[key])
        crc = zlib.crc32(piece, crc)
    data = b"".join(deflated) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final empty block
    name = b"images.npy"
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), size)  # deflated, no zip64: size < 4 GiB
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0)
               + name)  # at offset 0
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    return path


def test_score_refuses_an_npz_member_inflating_to_gigabytes_by_its_declared_bytes(tmp_path):
    """2.9 MB of .npz whose one member declares (480000, 28, 28) float64: 3.0 GB of zeros, 480,000 images (fewer than
    any cap by images). Refused from the member's header by its size in bytes, before anything is allocated: in a
    process limited to 3 GiB of address space, where reading it was a MemoryError (a traceback) before the fix."""
    path = write_npz_bomb(tmp_path / "bomb.npz", (480_000, 28, 28))
    assert path.stat().st_size < 3_000_000
    with zipfile.ZipFile(path) as archive:  # a valid archive: its member inflates, checked, to all of its bytes
        assert archive.infolist()[0].file_size == 128 + 3_010_560_000
    result = score_in_capped_process(path)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines == [f"mnistgen: error: {path} (images.npy): its header declares an array of shape (480000, 28, 28) "
                     "and dtype float64, 3,010,560,000 bytes as scored; mnistgen reads arrays of at most "
                     "536,870,912 bytes"], result.stderr
    assert not score_path(path).exists()


def test_an_array_is_bounded_by_the_bytes_it_is_scored_in(tmp_path, monkeypatch):
    """uint8 levels are scored as float32: four bytes each count, in an .npy file as in an .npz member."""
    from mnistgen import scoring

    levels = np.zeros((10, 28, 28), np.uint8)
    np.save(tmp_path / "levels.npy", levels)
    np.savez_compressed(tmp_path / "levels.npz", images=levels)
    monkeypatch.setattr(scoring, "MAX_ARRAY_BYTES", 4 * levels.size)  # exactly the float32 of the ten images
    assert scoring.load_images(tmp_path / "levels.npy").shape == (10, 28, 28)
    monkeypatch.setattr(scoring, "MAX_ARRAY_BYTES", 4 * levels.size - 1)
    for name, where in (("levels.npy", "levels.npy"), ("levels.npz", "levels.npz (images.npy)")):
        with pytest.raises(MnistgenError) as info:
            scoring.load_images(tmp_path / name)
        assert str(info.value) == (f"{tmp_path / where}: its header declares an array of shape (10, 28, 28) and "
                                   f"dtype uint8, 31,360 bytes as scored; mnistgen reads arrays of at most 31,359 "
                                   "bytes")


# --------------------------------------------------------------------------- score: no MNIST to be had


@pytest.mark.parametrize(("where", "offline"), [("user cache", True), ("user cache", False),
                                                ("$MNISTGEN_DATA_DIR", True)])
def test_score_without_mnist_gives_only_the_real_reason(tmp_path, monkeypatch, capsys, where, offline):
    """No files and no way to get them: the reason, once. Not the stand-in sample's warning (which suggests
    --dataset mnist-sample, a flag score does not have) followed by the reference's refusal of that sample."""
    from mnistgen.data import sources

    monkeypatch.setattr(sources, "_ANNOUNCED_FALLBACKS", set())  # the warning is printed once per process
    monkeypatch.setattr(sources, "_FAILED_DOWNLOADS", {})  # and a download tried once
    monkeypatch.setenv("MNISTGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MNISTGEN_MIRRORS", UNREACHABLE_MIRROR)
    monkeypatch.setenv("MNISTGEN_OFFLINE", "1" if offline else "0")
    if where == "$MNISTGEN_DATA_DIR":
        (tmp_path / "empty").mkdir()
        monkeypatch.setenv("MNISTGEN_DATA_DIR", str(tmp_path / "empty"))
    else:
        monkeypatch.delenv("MNISTGEN_DATA_DIR", raising=False)
    path = tmp_path / "x.npy"
    np.save(path, images())
    code = main(["score", str(path), "--device", "cpu", "--download-timeout", "5", "--download-retries", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert "WARNING" not in err and "--dataset mnist-sample" not in err and "not a sample" not in err, err
    [line] = err.splitlines()  # no line per mirror not reached, and no exception text
    assert line.startswith("mnistgen: error: the score needs full MNIST (its test images and 10,000 training images): "
                           "4 of 4 files missing from "), err
    assert ("offline mode is on" if offline else f"the network is unreachable (no answer from {UNREACHABLE_MIRROR})"
            ) in line and "refused" not in line and "mnistgen data fetch" in line, err
    assert not score_path(path).exists()
    if where == "$MNISTGEN_DATA_DIR":
        assert list((tmp_path / "empty").iterdir()) == []


# --------------------------------------------------------------------------- score: float pixel levels 0-255


@pytest.mark.parametrize(("low", "high", "hint"), [(0.0, 255.0, True), (0.0, 1.6, True), (0.0, 1.2, False),
                                                   (-1.0, 255.0, False), (0.0, 300.0, False)])
def test_score_of_float_levels_0_255_says_to_divide_by_255(tmp_path, capsys, low, high, hint):
    array = images()
    array[0, 0, :2] = low, high
    path = tmp_path / "x.npy"
    np.save(path, array)
    line = error_line(capsys, run_main(["score", str(path), "--device", "cpu"]))
    assert f"values outside [0, 1] (min {low:.4g}, max {high:.4g})" in line
    assert ("divide them by 255" in line) == hint, line  # only where 0-255 levels are what the values look like


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 1.0, width=32), st.floats(1.5, 255.0, exclude_min=True, width=32),
       st.sampled_from([np.float32, np.float64]))
def test_any_float_array_of_levels_0_255_gets_the_hint(low, high, dtype):
    array = images().astype(dtype)
    array[0, 0, :2] = low, high
    with pytest.raises(MnistgenError, match=r"; pixel levels 0-255\? divide them by 255$"):
        check_images(array, "x.npy")


# --------------------------------------------------------------------------- an unreadable checkpoint


def test_an_unreadable_checkpoint_says_what_to_do_and_doing_it_works(tmp_path, capsys):
    run = tmp_path / "run"
    train = ["vae", "train", "--out", str(run), "--dataset", "mnist-sample", "--epochs", "1", "--device", "cpu"]
    sample = ["vae", "sample", str(run), "--n", "2", "--out", str(tmp_path / "s.npy")]
    assert run_main(train) == 0
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    capsys.readouterr()
    line = error_line(capsys, run_main(sample))
    assert line.endswith(f"{checkpoint}: not a readable checkpoint (RuntimeError); restore it from a copy, or delete "
                         "it and train the run again (from epoch 1)"), line
    checkpoint.unlink()  # the advice, followed
    assert run_main(train) == 0 and run_main(sample) == 0
    assert [record["epoch"] for record in RunDir(run).read_metrics()] == [1]


# --------------------------------------------------------------------------- score: a read-only folder


def test_score_refuses_a_read_only_folder_before_the_work(tmp_path, monkeypatch, capsys, read_only):
    import mnistgen.scoring

    folder = tmp_path / "locked"
    folder.mkdir()
    np.save(folder / "x.npy", images())
    read_only(folder)
    forbid(monkeypatch, mnistgen.scoring, "load_classifier")
    line = error_line(capsys, main(["score", str(folder / "x.npy"), "--device", "cpu"]))
    assert line.startswith(f"mnistgen: error: cannot write {folder / 'x.score.json'}: the folder {folder} is not "
                           "writable"), line
    assert sorted(p.name for p in folder.iterdir()) == ["x.npy"]


def test_the_output_folder_is_tried_not_guessed(tmp_path, monkeypatch, capsys, read_only):
    """Where os.access cannot know (root on some network file systems), the file created and removed in the
    folder still tells: simulated by an os.access that says yes to everything."""
    import mnistgen.scoring

    folder = tmp_path / "locked"
    folder.mkdir()
    np.save(folder / "x.npy", images())
    read_only(folder)
    forbid(monkeypatch, mnistgen.scoring, "load_classifier")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    line = error_line(capsys, main(["score", str(folder / "x.npy"), "--device", "cpu"]))
    assert f"the folder {folder} is not writable (" in line, line
    assert sorted(p.name for p in folder.iterdir()) == ["x.npy"]


# --------------------------------------------------------------------------- sample: missing or read-only folder


@pytest.fixture(scope="module")
def vae_run(mnist_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean-vae") / "run"
    assert main(["vae", "train", "--out", str(folder), "--epochs", "1", "--data-dir", str(mnist_dir),
                 "--device", "cpu", "--cpu-kernels", "torch"]) == 0  # torch: no note where there is no compiler
    return RunDir(folder).path


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean-gan") / "run"
    assert main(["gan", "train", "--out", str(folder), "--dataset", "mnist-sample", "--epochs", "1",
                 "--grid-every", "1", "--device", "cpu", "--threads", "1", "--cpu-kernels", "torch"]) == 0
    return folder


def sample_command(family: str, request) -> tuple[list[str], object, str]:
    """The argv start of ``FAMILY sample RUN``, and the function whose call is the work (to forbid)."""
    import mnistgen.evaluate.gan
    import mnistgen.evaluate.vae

    if family == "vae":
        run = request.getfixturevalue("vae_run")
        return ["vae", "sample", str(run), "--n", "8", "--device", "cpu"], mnistgen.evaluate.vae, "sample_run"
    run = request.getfixturevalue("gan_run")
    return ["gan", "sample", str(run), "--n", "8", "--device", "cpu"], mnistgen.evaluate.gan, "load_generator"


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_sample_refuses_a_missing_folder_and_does_not_create_it(family, request, tmp_path, monkeypatch, capsys):
    argv, module, work = sample_command(family, request)
    forbid(monkeypatch, module, work)
    out = tmp_path / "missing" / "z.npy"
    line = error_line(capsys, run_main([*argv, "--out", str(out)]))
    assert line == f"mnistgen: error: --out {out}: the folder {out.parent} does not exist", line
    assert not out.parent.exists()


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_sample_refuses_a_read_only_folder_before_the_work(family, request, tmp_path, monkeypatch, capsys,
                                                           read_only):
    argv, module, work = sample_command(family, request)
    folder = tmp_path / "locked"
    folder.mkdir()
    read_only(folder)
    forbid(monkeypatch, module, work)
    out = folder / "z.npy"
    line = error_line(capsys, run_main([*argv, "--out", str(out)]))
    assert line.startswith(f"mnistgen: error: --out {out}: the folder {folder} is not writable"), line
    assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- report: a malformed score.json


STRINGS = {**GAN_SCORE, "n_images": "64", "frechet_distance": "123.456", "classifier_score": "3.25"}


@pytest.mark.parametrize(("content", "problem"), [
    (STRINGS, '"n_images" is a string, not a count of images'),
    ({**GAN_SCORE, "frechet_distance": "123.456"}, '"frechet_distance" is a string, not a number'),
    ({**GAN_SCORE, "class_histogram": "0123456789"}, '"class_histogram" is a string, not a list of counts'),
    ({**GAN_SCORE, "class_histogram": [1, "2"]}, '"class_histogram" holds a string "2", not a count'),
    ({**GAN_SCORE, "n_images": True}, '"n_images" is a boolean'),
    ({k: v for k, v in GAN_SCORE.items() if k != "classifier_score"}, 'no "classifier_score"'),
    ({**GAN_SCORE, "real_vs_real_reference": "none"}, '"real_vs_real_reference" is a string, not an object'),
    ({**GAN_SCORE, "real_vs_real_reference": {**GAN_SCORE["real_vs_real_reference"], "frechet_distance": "0.7"}},
     '"real_vs_real_reference.frechet_distance" is a string, not a number'),
    ({**GAN_SCORE, "classifier": "mine"}, '"classifier" is a string, not an object'),
    (["not", "an", "object"], "it holds a list, not an object"),
    ("a score", "it holds a string, not an object"),
])
def test_report_refuses_a_malformed_score_file_naming_it(tmp_path, capsys, content, problem):
    root = make_reproduction(tmp_path / "RUN")
    score_file = root / "samples" / "gan.score.json"
    score_file.write_text(json.dumps(content))
    line = error_line(capsys, main(["report", str(root)]))
    assert line.startswith(f"mnistgen: error: {score_file}: not a score written by mnistgen score ({problem}"), line
    assert not (root / "report.html").exists()


@pytest.mark.parametrize("array", [np.array(["a", "b"]), np.linspace(0, 1, 10, dtype=np.float32)])
def test_report_shows_no_preview_for_a_scored_file_that_is_not_images(tmp_path, capsys, array):
    """The .npy beside a score, replaced by something else: the page is built without its preview."""
    root = make_reproduction(tmp_path / "RUN")
    np.save(root / "samples" / "gan.npy", array)
    assert main(["report", str(root)]) == 0, capsys.readouterr().err
    text = (root / "report.html").read_text()
    assert "GAN, G(z)" in text and "of the scored images" not in text
