"""Property tests: whatever a config.json or a metrics.jsonl holds (edited by hand, cut off by a crash, written by
something else), ``--resume``, ``report`` and ``plot`` end with a clean result or one clean error line, never a
traceback. Hypothesis generates the files; each example runs the real command in this process on a copy of a
small trained run folder."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, VAEConfig
from mnistgen.data.protocols import Protocol
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


metrics_texts = st.lists(record_lines(), max_size=6).flatmap(
    lambda lines: st.sampled_from(["\n", ""]).map(lambda end: "\n".join(lines) + (end if lines else "")))


CONFIG_PATHS = ([(), ("kind",), ("config",)]
                + [("config", f.name) for cls in (VAEConfig, GANConfig) for f in dataclasses.fields(cls)]
                + [("config", "data", f.name) for f in dataclasses.fields(DataConfig)])
config_edits = st.tuples(st.sampled_from(CONFIG_PATHS), json_values)


def edited(stored: dict, edit: tuple[tuple[str, ...], object]) -> object:
    """``stored`` (config.json's content) with the value at ``path`` replaced (the whole file for ``()``)."""
    path, value = edit
    if not path:
        return value
    copy = json.loads(json.dumps(stored))
    holder = copy
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return copy


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
@example(text='{"epoch": 1, "train_elbo": -200.5, "d_loss": 1.0, "g_loss": 1.0, "d_real": 0.5, "d_fake": 0.5}\n'
              '{"epoch": 2, "train_el')  # a kill in the middle of an append
@example(text='{"epoch": 1, "train_elbo": "high"}\n{"epoch": 2}\n')  # text where a number belongs
@example(text='[1, 2]\n{"epoch": 1, "d_loss": NaN}\n')
def test_any_metrics_file_gives_a_clean_resume_report_and_plot(runs, no_data, text):
    for kind in ("vae", "gan"):
        run = copy_of(runs[kind])
        (run / "metrics.jsonl").write_text(text)
        assert_clean(*run_command([kind, "train", "--out", str(run), "--resume"]))
        assert_clean(*run_command(["report", str(run), "--out", str(run / "page.html")]))
        if kind == "gan":
            assert_clean(*run_command(["gan", "plot", str(run), "--epochs", "0,1"]))
        shutil.rmtree(run.parent)


@EXAMPLES
@given(edit=config_edits)
@example(edit=(("config", "epochs"), "3"))
@example(edit=(("config", "epochs"), 2.5))
@example(edit=(("config",), None))
@example(edit=(("config", "lr"), -1.0))
@example(edit=(("config", "epochs"), 7))  # valid: passes every check, then finds no data
def test_any_config_json_gives_a_clean_resume_report_and_plot(runs, no_data, edit):
    for kind in ("vae", "gan"):
        run = copy_of(runs[kind])
        stored = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(edited(stored, edit)))
        before = (run / "checkpoint.pt").read_bytes()
        assert_clean(*run_command([kind, "train", "--out", str(run), "--resume"]))
        assert (run / "checkpoint.pt").read_bytes() == before  # nothing trained: no data, or refused
        assert_clean(*run_command(["report", str(run), "--out", str(run / "page.html")]))
        if kind == "gan":
            assert_clean(*run_command(["gan", "plot", str(run), "--epochs", "0,1"]))
        shutil.rmtree(run.parent)
