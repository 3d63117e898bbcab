"""Property tests: whatever a config.json, a metrics.jsonl, a replicas.json or a checkpoint holds (edited by hand, cut
off by a crash, damaged on disk, written by something else), ``--resume``, ``report``, ``plot`` and ``sample`` end
with a clean result or one clean error line, never a traceback. Hypothesis generates the files; each example runs
the real command in this process on a copy of a small trained run folder. The arrays that ``score`` reads (.npy,
.npz) are generated down to their headers, and the memory their loading takes is measured."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import shutil
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mnistgen.api import load_run
from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, VAEConfig
from mnistgen.data.protocols import Protocol
from mnistgen.errors import MnistgenError
from mnistgen.runs import RunDir
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
METRIC_KEYS = ("epoch", "train_elbo", "test_elbo", "validation_elbo", "d_loss", "g_loss", "d_real", "d_fake",
               "seconds", "lr", "trained_by")


def record_lines() -> st.SearchStrategy[str]:
    """A metrics.jsonl line: a plausible record with arbitrary values, any JSON, or any text."""
    plausible = st.dictionaries(st.sampled_from(METRIC_KEYS) | st.text(max_size=6),
                                st.integers(-3, 300) | st.floats(-1e4, 1e4) | json_scalars, max_size=8)
    return (plausible.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=40)).filter(
        lambda line: "\n" not in line and "\r" not in line)


metrics_texts = st.lists(record_lines().map(str.encode) | st.binary(max_size=40).filter(lambda line: b"\n" not in line),
                         max_size=6).flatmap(  # the lines' text, or any bytes (UTF-8 or not)
    lambda lines: st.sampled_from([b"\n", b""]).map(lambda end: b"\n".join(lines) + (end if lines else b"")))


CONFIG_PATHS = ([(), ("kind",), ("config",)]
                + [("config", f.name) for cls in (VAEConfig, GANConfig) for f in dataclasses.fields(cls)]
                + [("config", "data", f.name) for f in dataclasses.fields(DataConfig)])
config_edits = st.tuples(st.sampled_from(CONFIG_PATHS), json_values) | st.binary(max_size=40)  # or any bytes


def edited(stored: dict, edit: tuple[tuple[str, ...], object] | bytes) -> bytes:
    """config.json's bytes: ``stored`` (its content) with the value at ``path`` replaced (the whole file for ``()``),
    or the bytes given."""
    if isinstance(edit, bytes):
        return edit
    path, value = edit
    copy = json.loads(json.dumps(stored))
    if not path:
        copy = value
    else:
        holder = copy
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = value
    return json.dumps(copy).encode()


def run_command(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)  # anything but a MnistgenError escapes and fails the test with its traceback
    return code, err.getvalue()


def assert_clean(code: int, err: str) -> None:
    """A result, or one error line: exit 1, or the usage error's exit 2 where config.json asks for more --threads
    than this machine allows (the run may have been trained on a larger one: a --threads flag resumes it here)."""
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("mnistgen") and ": error: " in line]
    assert code in (0, 1) or (code == 2 and ": error: --threads must be <= " in err), (code, err)
    assert "Traceback" not in err
    assert len(errors) == (code != 0), err
    assert all(line in errors or line.startswith("mnistgen: note: ") for line in lines), err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-epoch VAE run and a 1-epoch GAN run on a few random images."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(300, 784, generator=generator) < 0.2).float()
    labels = torch.zeros(300, dtype=torch.int64)
    protocol = Protocol("hw", images, labels, images[:100], labels[:100], images[:100], labels[:100],
                        dynamic_binarization=False, eval_name="test")
    folder = tmp_path_factory.mktemp("runs")
    vae, gan = RunDir(folder / "vae"), RunDir(folder / "gan")
    train_vae(VAEConfig(epochs=1, hidden=16, device="cpu", cpu_kernels="reference", data=DataConfig(offline=True)),
              vae, protocol=protocol, show_progress=False)
    train_gan(GANConfig(epochs=1, batch_size=50, grid_every=1, device="cpu", cpu_kernels="reference"),
              torch.rand(100, 1, 28, 28, generator=generator), gan, show_progress=False)
    return {"vae": vae.path, "gan": gan.path}


@pytest.fixture(scope="module")
def replica_run(tmp_path_factory):
    """A 1-epoch VAE run of two seeds (replicas), RUN/seed=1 and RUN/seed=2."""
    images = (torch.rand(300, 784, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    labels = torch.zeros(300, dtype=torch.int64)
    protocol = Protocol("hw", images, labels, images[:100], labels[:100], images[:100], labels[:100],
                        dynamic_binarization=False, eval_name="test")
    run = RunDir(tmp_path_factory.mktemp("replicas") / "run")
    train_vae(VAEConfig(epochs=1, hidden=16, seeds="1,2", device="cpu", cpu_kernels="reference",
                        data=DataConfig(offline=True)), run, protocol=protocol, show_progress=False)
    return run.path


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A config that passes every check goes on to load data: from an empty folder, offline (a clean error)."""
    (tmp_path / "no-data").mkdir()
    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("MNISTGEN_OFFLINE", "1")


def copy_of(source: Path) -> Path:
    target = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(source, target)
    return target


@EXAMPLES
@given(text=metrics_texts)
@example(text=b'{"epoch": 1, "train_elbo": -200.5, "d_loss": 1.0, "g_loss": 1.0, "d_real": 0.5, "d_fake": 0.5}\n'
              b'{"epoch": 2, "train_el')  # a kill in the middle of an append
@example(text=b'{"epoch": 1, "train_elbo": "high"}\n{"epoch": 2}\n')  # text where a number belongs
@example(text=b'[1, 2]\n{"epoch": 1, "d_loss": NaN}\n')
@example(text=b'{"epoch": 1, "d_loss": 1}\n{"epoch": 2, "trained_by": "\xff"}')  # bytes that are not UTF-8, last
def test_any_metrics_file_gives_a_clean_resume_report_and_plot(runs, no_data, text):
    """...and a damaged last line is never the reason for an error: it is dropped, with a note."""
    lines = text.decode("utf-8", "surrogateescape").split("\n")
    last = max((number for number, line in enumerate(lines, 1) if line.strip()), default=0)
    for kind in ("vae", "gan"):
        run = copy_of(runs[kind])
        (run / "metrics.jsonl").write_bytes(text)
        commands = [[kind, "train", "--out", str(run), "--resume"], ["report", str(run), "--out", str(run / "p.html")],
                    *([["gan", "plot", str(run), "--epochs", "0,1"]] if kind == "gan" else [])]
        for command in commands:
            code, err = run_command(command)
            assert_clean(code, err)
            error = err.splitlines()[-1] if code else ""
            assert f"metrics.jsonl, line {last}: " not in error and "metrics.jsonl: not readable" not in error, err
        shutil.rmtree(run.parent)


@pytest.mark.slow
@EXAMPLES
@given(edit=config_edits)
@example(edit=(("config", "epochs"), "3"))
@example(edit=(("config", "epochs"), 2.5))
@example(edit=(("config",), None))
@example(edit=(("config", "lr"), -1.0))
@example(edit=(("config", "epochs"), 7))  # valid: passes every check, then finds no data
@example(edit=(("config", "threads"), 3000))  # trained where more threads were allowed: --resume asks for --threads
@example(edit=b'{"kind": "vae\xff"}')  # bytes that are not UTF-8
def test_any_config_json_gives_a_clean_resume_report_and_plot(runs, no_data, edit):
    for kind in ("vae", "gan"):
        run = copy_of(runs[kind])
        stored = json.loads((run / "config.json").read_text())
        (run / "config.json").write_bytes(edited(stored, edit))
        before = (run / "checkpoint.pt").read_bytes()
        assert_clean(*run_command([kind, "train", "--out", str(run), "--resume"]))
        assert (run / "checkpoint.pt").read_bytes() == before  # nothing trained: no data, or refused
        assert_clean(*run_command(["report", str(run), "--out", str(run / "page.html")]))
        if kind == "gan":
            assert_clean(*run_command(["gan", "plot", str(run), "--epochs", "0,1"]))
        shutil.rmtree(run.parent)


@EXAMPLES
@given(content=json_values.map(lambda value: json.dumps(value).encode()) | st.binary(max_size=40),
       pending=st.sampled_from([(1,), (1, 2)]))
@example(content=b"[]", pending=(1,))
@example(content=b'"x"', pending=(1, 2))
@example(content=b'{"seeds": [1, 2], "epoch": 1, "step": 0}', pending=(1, 2))  # the commit of the pending files
@example(content=b'{"epoch": "1", "step": null}', pending=(1,))
def test_any_replicas_json_beside_a_pending_checkpoint_gives_a_clean_resume_and_report(replica_run, no_data, content,
                                                                                      pending):
    """A replica run killed in the middle of a commit (a pending checkpoint.next.pt in some seeds' folders), whatever
    RUN/replicas.json holds."""
    run = copy_of(replica_run)
    for seed in pending:
        (run / f"seed={seed}" / "checkpoint.next.pt").write_bytes((run / f"seed={seed}" / "checkpoint.pt").read_bytes())
    (run / "replicas.json").write_bytes(content)
    assert_clean(*run_command(["vae", "train", "--out", str(run), "--resume", "--epochs", "2"]))
    assert_clean(*run_command(["report", str(run), "--out", str(run / "page.html")]))
    shutil.rmtree(run.parent)


checkpoint_damage = (st.binary(max_size=200)  # any bytes; a real checkpoint cut short, or with a byte changed
                     | st.integers(0, 10**9).map(lambda cut: ("cut", cut))
                     | st.tuples(st.integers(0, 10**9), st.integers(0, 255)).map(lambda flip: ("flip", *flip)))


def damaged(real: bytes, damage: bytes | tuple) -> bytes:
    """``damage`` (from :data:`checkpoint_damage`) done to the bytes of a real checkpoint."""
    if isinstance(damage, bytes):
        return damage
    if damage[0] == "cut":
        return real[:damage[1] % len(real)]
    position = damage[1] % len(real)
    return real[:position] + bytes([damage[2]]) + real[position + 1:]


@pytest.mark.slow
@EXAMPLES
@given(damage=checkpoint_damage)
@example(damage=("cut", 0))
@example(damage=("cut", 1000))
@example(damage=b"PK\x03\x04")
def test_any_checkpoint_gives_a_clean_resume_report_and_sample(runs, no_data, tmp_path, damage):
    """Whatever checkpoint.pt holds (the bound on memory: torch reads what the file holds, a few hundred kB here)."""
    for kind in ("vae", "gan"):
        run = copy_of(runs[kind])
        (run / "checkpoint.pt").write_bytes(damaged((run / "checkpoint.pt").read_bytes(), damage))
        assert_clean(*run_command([kind, "train", "--out", str(run), "--resume", "--epochs", "2"]))
        assert_clean(*run_command(["report", str(run), "--out", str(run / "page.html")]))
        assert_clean(*run_command([kind, "sample", str(run), "--n", "2", "--out", str(run / "x.npy"), "--device",
                                   "cpu"]))
        try:
            load_run(run, device="cpu")
        except MnistgenError as error:
            assert "\n" not in str(error)
        shutil.rmtree(run.parent)


# --------------------------------------------------------------------------- the arrays that score reads

ARRAY_LIMIT = 64 << 10  # MAX_ARRAY_BYTES while the properties run: arrays of a few times this are cheap to write
MEMORY_SLACK = 256 << 10  # what reading a small file takes besides the array: zipfile's buffers, the header


def npy_header(header: dict | str, version: int) -> bytes:
    """A .npy header (magic, version, length, text) holding ``header``: a dict as numpy writes one, or any text."""
    text = (repr(header) if isinstance(header, dict) else header).encode("latin1", "replace")
    size = 10 if version == 1 else 12
    text += b" " * (-(size + len(text) + 1) % 64) + b"\n"
    length = len(text).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + length + text


DESCRS = ["|u1", "<f4", "<f8", ">f8", "<f2", "<i2", "|b1", "<c16", "|V0", "|V8", "<U3", "|O", "<M8[s]"]
image_shapes = st.tuples(st.integers(-2, 30) | st.integers(31, 10**6), st.just(28), st.just(28))
image_headers = st.fixed_dictionaries({"descr": st.sampled_from(["|u1", "<f4", "<f8"]), "fortran_order": st.booleans(),
                                       "shape": image_shapes})  # what score takes, of any size
any_shapes = (image_shapes | json_values
              | st.lists(st.integers(-2, 40) | st.integers(2**40, 2**70), max_size=4).map(tuple))
any_headers = (st.fixed_dictionaries({"descr": st.sampled_from(DESCRS) | json_values,
                                      "fortran_order": st.booleans() | json_values, "shape": any_shapes})
               | st.text(max_size=60))


@st.composite
def array_files(draw) -> tuple[str, bytes]:
    """A .npy file or an .npz of one member: a header declaring (N, 28, 28) images of any size, followed by the bytes
    it declares; or, as often, anything: a header declaring any dtype and shape or damaged, of any format version,
    followed by a few bytes more or fewer than it declares, the file perhaps cut short anywhere. The bytes are a
    repeated pattern (zeros, 1.0 in float32, or any)."""
    damaged = draw(st.booleans())
    header = draw(any_headers if damaged else image_headers)
    try:
        declared = math.prod(int(n) for n in header["shape"]) * np.dtype(header["descr"]).itemsize
    except Exception:  # not a header numpy reads: any length
        declared = draw(st.integers(0, 100))
    length = min(max(declared + (draw(st.integers(-3, 3)) if damaged else 0), 0), 5 * ARRAY_LIMIT)
    pattern = draw(st.sampled_from([b"\x00", b"\x00\x00\x80\x3f"]) | st.binary(min_size=1, max_size=8))
    version = draw(st.sampled_from([1, 2, 3] if damaged else [1, 2]))
    data = npy_header(header, version) + (pattern * (length // len(pattern) + 1))[:length]
    suffix = draw(st.sampled_from(["npy", "npz"]))
    if suffix == "npz":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(draw(st.sampled_from(["images.npy", "a/b.npy", "images"])), data)
        data = buffer.getvalue()
    return suffix, data[:draw(st.integers(0, len(data)))] if damaged and draw(st.booleans()) else data


def saved(suffix: str, array: np.ndarray) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    (np.save if suffix == "npy" else lambda handle, a: np.savez_compressed(handle, images=a))(buffer, array)
    return suffix, buffer.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=array_files())
@example(file=("npz", b"PK\x05\x06" + bytes(18)))  # an empty archive
@example(file=saved("npy", np.zeros((10, 28, 28))))  # 62,720 bytes: read
@example(file=saved("npz", np.zeros((11, 28, 28))))  # 68,992 bytes: past the bound
@example(file=saved("npz", np.zeros((21, 28, 28), np.uint8)))  # 65,856 bytes as float32: past the bound
def test_any_array_file_is_read_or_refused_within_a_bound_on_memory(tmp_path, monkeypatch, file):
    """``score``'s reader (``report`` reads score files' images with it too) returns (N, 28, 28) floats in [0, 1] or
    refuses in one line naming the file. Its memory stays within a few times the bound on an array's bytes whatever
    the header declares, and an array declared past the bound is refused before its bytes are read."""
    from mnistgen import scoring

    suffix, data = file
    path = tmp_path / f"images.{suffix}"
    path.write_bytes(data)
    monkeypatch.setattr(scoring, "MAX_ARRAY_BYTES", ARRAY_LIMIT, raising=False)
    tracemalloc.start()
    try:
        images = scoring.load_images(path)
    except MnistgenError as error:
        images, message = None, str(error)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    event("read" if images is not None else "refused: " + message.removeprefix(str(path)).split(",")[0][:40])
    if images is None:
        assert message.startswith(str(path)) and "\n" not in message, message
        if "mnistgen reads arrays of at most" in message:
            assert peak < MEMORY_SLACK, peak  # refused by the header: none of the array was read
    else:
        assert images.shape[1:] == (28, 28) and images.dtype in (np.float32, np.float64)
        assert images.nbytes <= ARRAY_LIMIT
    assert peak < 3 * ARRAY_LIMIT + MEMORY_SLACK, peak


# --------------------------------------------------------------------------- sweep files

SWEEP_LIMIT = 50  # trials: a smaller limit than the command's keeps each example quick; the check is the same
PLAUSIBLE = {"epochs": st.integers(1, 300), "lr": st.floats(1e-5, 0.1), "batch_size": st.integers(1, 256),
             "threads": st.integers(1, 4), "device": st.just("cpu"), "dataset": st.just("mnist-sample"),
             "hidden": st.integers(1, 500), "latent_dim": st.integers(1, 8), "zdim": st.integers(1, 64)}
SETTING_NAMES = (*PLAUSIBLE, "seed", "seeds", "replicas", "protocol", "epoch", "data_dir", "lr_schedule", "lr_min")
toml_scalars = (st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                | st.sampled_from(["vae", "gan", "mnist-sample", "hw", "full", "cpu", "cosine"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(SETTING_NAMES) | st.text(max_size=6), inner, max_size=3),
                           max_leaves=12)
setting_names = st.sampled_from(SETTING_NAMES) | st.text(max_size=6)
any_settings = st.dictionaries(setting_names, toml_values, max_size=6)
plausible_settings = st.sampled_from(sorted(PLAUSIBLE)).flatmap(lambda name: st.tuples(st.just(name), PLAUSIBLE[name]))
plausible_grids = st.lists(st.sampled_from(sorted(PLAUSIBLE)), min_size=1, max_size=8, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: st.lists(PLAUSIBLE[name], min_size=1, max_size=12, unique=True)
                                         for name in names}))
plausible_sweeps = st.fixed_dictionaries(  # a sweep file as one would write it: many valid, many over the limit
    {"model": st.sampled_from(["vae", "gan"])},
    optional={"seeds": st.lists(st.integers(0, 99), min_size=1, max_size=8, unique=True),
              "base": st.lists(plausible_settings, max_size=4).map(dict), "grid": plausible_grids})
odd_sweeps = st.fixed_dictionaries(  # the same keys holding anything, and keys that a sweep file does not have
    {"model": st.sampled_from(["vae", "gan"]) | toml_values},
    optional={"seeds": st.lists(st.integers(), max_size=3) | toml_values, "replicas": st.integers(1, 60) | toml_values,
              "base": any_settings | toml_values, "list": st.lists(any_settings, max_size=60) | toml_values,
              "grid": st.dictionaries(setting_names, st.lists(toml_scalars, max_size=12), max_size=10) | toml_values}
) | st.dictionaries(st.text(max_size=8), toml_values | any_settings, max_size=6)


def toml_value(value: object) -> str:
    """``value`` as TOML writes it: arrays and inline tables, strings with JSON's escapes (TOML's too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # nan, inf, -inf, 1e+100: TOML's spellings too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{toml_value(key)} = {toml_value(item)}" for key, item in value.items()) + "}"


def toml_text(data: dict) -> str:
    return "".join(f"{toml_value(key)} = {toml_value(value)}\n" for key, value in data.items())


sweep_tables = plausible_sweeps | plausible_sweeps | odd_sweeps


@contextlib.contextmanager
def address_space_limited(extra: int):
    """Inside the block this process may map only ``extra`` bytes more than it holds now (past that: MemoryError)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard),
                                            hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
sweep_texts = (sweep_tables.map(toml_text) | st.text(max_size=300)  # a sweep file's tables, or any text
               | st.tuples(sweep_tables.map(toml_text), st.text(max_size=20), st.integers(0, 10**6)).map(
                   lambda parts: parts[0][:parts[2] % (len(parts[0]) + 1)] + parts[1]
                   + parts[0][parts[2] % (len(parts[0]) + 1):]))  # and with a piece of text inserted anywhere


@settings(max_examples=200, deadline=None)
@given(text=sweep_texts)
@example(text='model = "vae"\n[grid]\n' + "".join(f"k{i} = {list(range(10))}\n" for i in range(8)))  # 10**8
@example(text='model = "vae"\n[grid]\n' + "".join(f"{key} = {list(range(1, 11))}\n" for key in (
    "hidden", "latent_dim", "epochs", "batch_size", "train_samples", "lr_decay_every", "validation_size",
    "download_retries")))
@example(text='model = "vae"\nreplicas = 1000000000\n')
@example(text='model = "gan"\nreplicas = 2\n[[list]]\nzdim = 8\n[[list]]\nzdim = 16\n')  # valid
@example(text='model = ["vae"]\n')
@example(text='model = "vae"\n[grid]\nreplicas = [2]\n')
@example(text='model = "vae"\nseed = [1]\n')
@example(text='model = "vae"\nx = ' + "[" * 3000 + "]" * 3000 + "\n")
@example(text='model = "vae"\n[base]\nlr = 1' + "0" * 400 + "\n")
@example(text='model = "vae"\n[base]\nepochs = 1' + "0" * 5000 + "\n")
def test_any_sweep_file_is_a_valid_sweep_or_one_clean_line_and_never_more_trials_than_the_limit(text):
    """Whatever text a sweep file holds, reading it ends in a valid sweep of at most the limit's trials or in one
    :class:`MnistgenError` (the command's one-line error), never another exception; and no more configurations
    or trials than the limit are ever made, whatever the grid's size: the check comes before the expansion."""
    from unittest import mock

    import mnistgen.sweep as sweep_module
    from mnistgen.cli.common import printable
    from mnistgen.errors import MnistgenError

    made = {"configurations": 0, "trials": 0}

    def counted(kind: str, make):
        def counting(*args, **kwargs):
            made[kind] += 1
            assert made[kind] <= SWEEP_LIMIT, f"more {kind} made than the limit of {SWEEP_LIMIT}"
            return make(*args, **kwargs)
        return counting

    name, trial = counted("configurations", sweep_module.configuration_name), counted("trials", sweep_module.Trial)
    with mock.patch.object(sweep_module, "configuration_name", name), mock.patch.object(sweep_module, "Trial", trial):
        try:
            with address_space_limited(512 << 20):  # a grid expanded before its size is checked: MemoryError
                sweep = sweep_module.parse_sweep(text, "s.toml", max_trials=SWEEP_LIMIT)
        except MnistgenError as exc:
            message = printable(str(exc))  # as the command prints it
            assert message.startswith("s.toml: ") and "\n" not in message
            event(" ".join(re.sub(r"[^a-z ]", "", message[8:]).split()[:2]))
            return
    event("valid")
    assert 1 <= len(sweep.configurations) * len(sweep.seeds) <= SWEEP_LIMIT
    assert made["trials"] == len(sweep.configurations) * len(sweep.seeds)
