"""Faults that must end in one line on stderr and a non-zero exit, with nothing written.

- ``score`` of a .npy whose header claims 100 million images: refused from the header against the file's size,
  before anything is allocated (checked in a process whose address space is capped at a few GB);
- ``score`` with no MNIST to be had: only the real reason, not the stand-in sample's warning (which names a
  ``--dataset`` flag ``score`` does not have) followed by the refusal;
- ``sample --out MISSING/z.npy``: refused, the folder is not created;
- a read-only output folder, for ``score`` and ``sample``: refused before the work, not after it. The folder is
  made read-only in a way that holds for root too (mode 555, and the immutable attribute where the tests run as
  root, whom mode bits do not stop); where that cannot be done the test is skipped, saying why;
- ``report`` on a folder whose score.json is not what ``score`` writes (strings for numbers, not an object, a key
  missing): one line naming the file, no page written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_support import GAN_SCORE, make_reproduction

from mnistgen.cli import main
from mnistgen.runs import RunDir
from mnistgen.scoring import score_path

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


@pytest.mark.parametrize("dtype", ["|u1", "<f4"])
def test_score_refuses_a_header_claiming_100_million_images_before_allocating(tmp_path, dtype):
    """(100,000,000, 28, 28): 78 GB as uint8, 314 GB as float32, in a file of a few bytes. np.load would allocate it
    first: in a process limited to 3 GiB of address space that is a MemoryError (a traceback) before the fix."""
    path = tmp_path / "huge.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": dtype, "fortran_order": False,
                                                      "shape": (100_000_000, 28, 28)})
        handle.write(bytes(64))
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
              "from mnistgen.cli import main\n"
              f"sys.exit(main(['score', {str(path)!r}, '--device', 'cpu']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("mnistgen: error: "), result.stderr
    assert f"{path}: not a .npy file (its header claims an array of shape (100000000, 28, 28)" in lines[0]
    assert "but only 64 follow it" in lines[0]
    assert not score_path(path).exists()


# --------------------------------------------------------------------------- score: no MNIST to be had


@pytest.mark.parametrize(("where", "offline"), [("user cache", True), ("user cache", False),
                                                ("$MNISTGEN_DATA_DIR", True)])
def test_score_without_mnist_gives_only_the_real_reason(tmp_path, monkeypatch, capsys, where, offline):
    """No files and no way to get them: the reason, once. Not the stand-in sample's warning (which suggests
    --dataset mnist-sample, a flag score does not have) followed by the reference's refusal of that sample."""
    from mnistgen.data import sources

    monkeypatch.setattr(sources, "_ANNOUNCED_FALLBACKS", set())  # the warning is printed once per process
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
    *attempts, last = err.splitlines()
    assert last.startswith("mnistgen: error: the score's real-vs-real reference needs full MNIST: 4 of 4 files "
                           "missing from "), err
    assert ("offline mode is on" if offline else f"no mirror delivered it ({UNREACHABLE_MIRROR}") in last
    if offline:
        assert attempts == [], err  # one line
    else:  # the lines of the download attempt that failed, as `mnistgen data fetch` shows them
        assert attempts and all(a.startswith(("mnistgen: downloading ", f"mnistgen: {UNREACHABLE_MIRROR}"))
                                for a in attempts), err
    assert not score_path(path).exists()
    if where == "$MNISTGEN_DATA_DIR":
        assert list((tmp_path / "empty").iterdir()) == []


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
