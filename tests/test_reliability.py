"""Nothing lost, nobody in: the faults a run folder must survive (docs/RELIABILITY.md lists each with its test).

Each test injects the fault: a gradient that overflows, a start that dies before its first checkpoint, a metrics
line cut off by a crash, an edited config.json, a second process, a damaged checkpoint, a full disk. Small
synthetic image sets keep every training run here under a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnistgen.api import load_run
from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, VAEConfig, to_dict
from mnistgen.data.protocols import Protocol
from mnistgen.errors import MnistgenError, NonFiniteLossError, TrainingInterrupted
from mnistgen.models import gan as gan_models
from mnistgen.models import vae as vae_models
from mnistgen.runs import RunDir
from mnistgen.train.common import non_finite_entry
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VAE_SMALL = VAEConfig(epochs=2, device="cpu", hidden=32, cpu_kernels="reference", data=DataConfig(offline=True))
GAN_SMALL = GANConfig(epochs=2, batch_size=32, grid_every=1, device="cpu", threads=1, cpu_kernels="reference")


def vae_protocol(count: int = 600, held_out: int = 200, seed: int = 0) -> Protocol:
    """Random binary 'images' (count, 784): six steps of 100 per epoch."""
    generator = torch.Generator().manual_seed(seed)
    train = (torch.rand(count, 784, generator=generator) < 0.2).float()
    held = (torch.rand(held_out, 784, generator=generator) < 0.2).float()
    labels = torch.zeros(count, dtype=torch.int64)
    return Protocol("hw", train, labels, held, labels[:held_out], held, labels[:held_out],
                    dynamic_binarization=False, eval_name="test")


def gan_images(count: int = 100, seed: int = 0) -> torch.Tensor:
    return torch.rand((count, 1, 28, 28), generator=torch.Generator().manual_seed(seed)).pow(4)


def stop_after(steps: int):
    """A ``stop`` that asks the loop to stop once ``steps`` steps were taken (it is polled before each step)."""
    polls = iter(range(10**9))
    return lambda: next(polls) >= steps


def overflowing_gradient(module: torch.nn.Module, at_call: int) -> None:
    """From its ``at_call``-th backward on, the first parameter's gradient is infinite (as an overflow gives)."""
    calls = iter(range(1, 10**9))
    parameter = next(module.parameters())
    parameter.register_hook(lambda grad: grad * math.inf if next(calls) >= at_call else grad)


def folder_bytes(run: RunDir) -> dict[str, bytes]:
    return {p.relative_to(run.path).as_posix(): p.read_bytes() for p in sorted(run.path.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("mnistgen: error: ") and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- 1. no checkpoint with a NaN in it


@given(where=st.sampled_from(["model.weight", "optimizer.state.0.exp_avg_sq", "optimizer.state.1.exp_avg"]),
       position=st.integers(0, 59), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
@settings(max_examples=30, deadline=None)
def test_the_first_non_finite_entry_is_named_and_large_finite_values_are_not(where, position, bad):
    def state() -> dict:  # finite values near the largest float32 (their sum overflows), an empty and an int tensor
        big = torch.full((60,), 3e38)
        return {"model": {"weight": big.clone(), "empty": torch.zeros(0)},
                "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg_sq": -big.clone()},
                                        1: {"exp_avg": big.clone().view(6, 10)}},
                              "param_groups": [{"params": [0, 1]}]},
                "order": torch.arange(5)}

    assert non_finite_entry(state()) is None
    broken = state()
    parent = broken
    *path, last = where.split(".")
    for key in path:
        parent = parent[int(key) if key.isdigit() else key]
    parent[last].view(-1)[position] = bad
    assert non_finite_entry(broken) == where


def test_vae_stop_after_a_gradient_overflow_never_saves_nan_weights(tmp_path, monkeypatch):
    """The loss of step 3 is finite, its gradient is not: Adam leaves NaN weights behind. Ctrl-C right after it
    must not replace the good checkpoint, and the message must say which state is kept."""
    run, protocol = RunDir(tmp_path / "run"), vae_protocol()
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1), run, protocol=protocol, show_progress=False)
    good = run.checkpoint.read_bytes()
    build = vae_models.build_model

    def build_then_overflow(config, device):
        model = build(config, device)
        overflowing_gradient(model, at_call=3)
        return model

    monkeypatch.setattr(vae_models, "build_model", build_then_overflow)
    with pytest.raises(NonFiniteLossError) as error:
        train_vae(VAE_SMALL, run, resume=True, protocol=protocol, stop=stop_after(3), show_progress=False)
    assert "NaN or infinite" in str(error.value) and "keeps the state after epoch 1" in str(error.value)
    assert run.checkpoint.read_bytes() == good
    monkeypatch.setattr(vae_models, "build_model", build)
    history = train_vae(VAE_SMALL, run, resume=True, protocol=protocol, show_progress=False)  # still resumable
    assert [r["epoch"] for r in history] == [1, 2]


def test_gan_stop_after_a_gradient_overflow_never_saves_nan_weights(tmp_path, monkeypatch):
    run, images = RunDir(tmp_path / "run"), gan_images()
    build = gan_models.build_models

    def build_then_overflow(config, device):
        generator, discriminator = build(config, device)
        overflowing_gradient(discriminator, at_call=2)  # D's second step, in epoch 1 (3 steps per epoch)
        return generator, discriminator

    monkeypatch.setattr(gan_models, "build_models", build_then_overflow)
    with pytest.raises(NonFiniteLossError) as error:
        train_gan(GAN_SMALL, images, run, stop=stop_after(2), show_progress=False)
    assert "keeps the state after epoch 0" in str(error.value)  # the untrained state written at the start
    assert torch.load(run.checkpoint, weights_only=True)["epoch"] == 0
    checkpoint = torch.load(run.checkpoint, weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["discriminator"].values())


def test_a_nan_in_the_first_epoch_says_that_nothing_was_saved(tmp_path, monkeypatch):
    run, protocol = RunDir(tmp_path / "run"), vae_protocol()
    build = vae_models.build_model
    monkeypatch.setattr(vae_models, "build_model",
                        lambda config, device: (lambda m: (overflowing_gradient(m, 2), m)[1])(build(config, device)))
    with pytest.raises(NonFiniteLossError, match="nothing was saved"):
        train_vae(VAE_SMALL, run, protocol=protocol, stop=stop_after(2), show_progress=False)
    assert not run.checkpoint.exists()


# --------------------------------------------------------------------------- 2. a start that died early


def test_a_start_that_died_before_its_first_checkpoint_is_no_dead_end(tmp_path, capsys):
    """NaN in epoch 1 leaves config.json and no checkpoint: the same command starts anew, and --resume starts
    from epoch 1 with the stored settings."""
    run = RunDir(tmp_path / "run")
    poisoned = dataclasses.replace(vae_protocol(), train_images=torch.full((600, 784), math.nan))
    with pytest.raises(NonFiniteLossError):
        train_vae(VAE_SMALL, run, protocol=poisoned, show_progress=False)
    assert run.config.is_file() and not run.checkpoint.exists()
    capsys.readouterr()
    history = train_vae(VAE_SMALL, run, protocol=vae_protocol(), show_progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    assert "an earlier start ended before its first checkpoint; starting anew" in capsys.readouterr().err

    again = RunDir(tmp_path / "again")
    with pytest.raises(NonFiniteLossError):
        train_vae(VAE_SMALL, again, protocol=poisoned, show_progress=False)
    resumed = train_vae(VAE_SMALL, again, resume=True, protocol=vae_protocol(), show_progress=False)
    assert "no checkpoint yet" in capsys.readouterr().err
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert torch.equal(again.load_checkpoint()["model"]["decoder.output.weight"],
                       run.load_checkpoint()["model"]["decoder.output.weight"])


def test_a_full_disk_at_the_first_save_is_one_line_and_the_command_then_works(tmp_path):
    """A real write failure from the kernel (a file-size limit: EFBIG, as ENOSPC would be) while the first
    checkpoint is written: one line, exit 1, no temporary left; the same command afterwards trains the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-c", textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        limit = int(sys.argv[1])
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        from mnistgen.cli import main
        sys.exit(main(["vae", "train", "--out", {str(out)!r}, "--dataset", "mnist-sample", "--epochs", "1",
                       "--hidden", "64", "--threads", "1"]))
        """)]
    full = subprocess.run([*command, "200000"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 1, full.stderr
    error = [line for line in full.stderr.splitlines() if "error" in line]
    assert error == [line for line in full.stderr.splitlines() if line.startswith("mnistgen: error: ")]
    assert len(error) == 1 and "cannot write" in error[0] and "checkpoint.pt" in error[0]
    assert "File too large" in error[0] and "Traceback" not in full.stderr
    assert not list(out.glob(".*.tmp")) and not (out / "checkpoint.pt").exists()
    again = subprocess.run([*command, "0"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "starting anew" in again.stderr and (out / "checkpoint.pt").is_file()


# --------------------------------------------------------------------------- 3. a damaged metrics.jsonl


@pytest.mark.parametrize(("damage", "problem"), [
    (b'{"epoch": 2, "train_elbo": -31', "not a complete JSON line"),  # what a kill in the middle of an append leaves
    (b'{"epoch": 2, "train_elbo": -31.5, "trained_by": "n\xe9\xff"}', "not UTF-8 text"),  # bytes damaged on disk
], ids=["cut short", "invalid UTF-8"])
def test_a_partial_last_metrics_line_is_dropped_with_one_note(tmp_path, capsys, damage, problem):
    run, protocol = RunDir(tmp_path / "run"), vae_protocol()
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1), run, protocol=protocol, show_progress=False)
    with open(run.metrics, "ab") as handle:
        handle.write(damage)
    capsys.readouterr()
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    note = capsys.readouterr().err
    assert len(note.splitlines()) == 1 and f"metrics.jsonl, line 2: {problem}" in note and "ignored" in note
    assert main(["report", str(run.path), "--out", str(tmp_path / "page.html")]) == 0
    capsys.readouterr()
    history = train_vae(VAE_SMALL, run, resume=True, protocol=protocol, show_progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    assert [json.loads(line)["epoch"] for line in run.metrics.read_text().splitlines()] == [1, 2]
    assert capsys.readouterr().err.count("metrics.jsonl, line 2") == 1  # the resume notes it once


@pytest.mark.parametrize(("damage", "problem"), [
    (b'{"epoch": 1, "train_elbo": "high"}', "'train_elbo' is 'high', not a finite number"),
    (b'{"epoch": 1, "train_elbo": -31.5, "test_elbo": -32.5, "trained_by": "\xff"}', "not UTF-8 text"),
], ids=["text for a number", "invalid UTF-8"])
def test_a_damaged_metrics_line_before_the_last_is_one_error_naming_the_line(tmp_path, capsys, damage, problem):
    run = RunDir(tmp_path / "run")
    train_vae(VAE_SMALL, run, protocol=vae_protocol(), show_progress=False)
    lines = run.metrics.read_bytes().splitlines()
    run.metrics.write_bytes(b"\n".join([damage, *lines[1:]]) + b"\n")
    with pytest.raises(MnistgenError, match=f"metrics.jsonl, line 1: {problem}$"):
        run.read_metrics()
    assert main(["report", str(run.path)]) == 1
    assert "metrics.jsonl, line 1" in one_line_error(capsys)
    assert main(["vae", "train", "--out", str(run.path), "--resume", "--epochs", "3"]) == 1
    assert "metrics.jsonl, line 1" in one_line_error(capsys)


# --------------------------------------------------------------------------- 4. the evaluation is guarded


def test_a_non_finite_evaluation_stops_the_run_like_a_non_finite_loss(tmp_path):
    run, protocol = RunDir(tmp_path / "run"), vae_protocol()
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1), run, protocol=protocol, show_progress=False)
    good = run.checkpoint.read_bytes()
    broken = dataclasses.replace(protocol, eval_images=torch.full_like(protocol.eval_images, math.nan))
    with pytest.raises(NonFiniteLossError, match="test_elbo became nan at the end of epoch 2"):
        train_vae(VAE_SMALL, run, resume=True, protocol=broken, show_progress=False)
    assert run.checkpoint.read_bytes() == good and len(run.read_metrics()) == 1


# --------------------------------------------------------------------------- 5. an edited config.json


@pytest.mark.parametrize(("field", "value", "flag"), [("objective", "analytic", "--objective"), ("lr", 1e6, "--lr"),
                                                      ("hidden", 64, "--hidden"), ("protocol", "full", "--protocol")])
def test_resume_refuses_a_config_json_edited_against_the_checkpoint(tmp_path, capsys, field, value, flag):
    """Two epochs: the first metrics line, not the last, lacks what an edited protocol expects (validation_elbo)."""
    run = RunDir(tmp_path / "run")
    train_vae(VAE_SMALL, run, protocol=vae_protocol(), show_progress=False)
    saved = json.loads(run.config.read_text())
    saved["config"][field] = value
    run.config.write_text(json.dumps(saved))
    before = folder_bytes(run)
    assert main(["vae", "train", "--out", str(run.path), "--resume"]) == 1
    err = one_line_error(capsys)
    assert f"differ from its checkpoint (a flag, or an edited config.json): {flag} " in err
    assert f"({flag} was {getattr(VAE_SMALL, field)!r}, now {value!r})" in err  # not the metrics that config expects
    assert folder_bytes(run) == before


# --------------------------------------------------------------------------- 6. one process per run folder


def test_a_second_process_on_the_same_run_folder_is_refused_in_one_line(tmp_path):
    """The lock is a real flock: a subprocess started while this process holds the folder is refused (naming
    this pid), and a holder killed with SIGKILL releases it."""
    run = RunDir(tmp_path / "run")
    cli = [sys.executable, "-m", "mnistgen", "vae", "train", "--out", str(run.path), "--dataset", "mnist-sample",
           "--epochs", "1"]
    with run.claimed():
        second = subprocess.run(cli, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1 and len(second.stderr.splitlines()) == 1, second.stderr
        assert f"is in use by another mnistgen process (pid {os.getpid()})" in second.stderr
    assert not run.path.exists()  # the folder the claim created is gone with it: nothing was written

    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from mnistgen.runs import RunDir
        with RunDir({str(run.path)!r}).claimed():
            os.kill(os.getpid(), signal.SIGKILL)
        """)], capture_output=True, timeout=120)
    assert killed.returncode == -9 and run.lock.is_file()
    with run.claimed():  # the kernel released the dead holder's lock
        pass


def test_two_trainings_started_one_after_the_other_cannot_both_write(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.claimed(), pytest.raises(MnistgenError, match="in use by another mnistgen process"):
        train_vae(VAE_SMALL, run, protocol=vae_protocol(), show_progress=False)  # same process, second descriptor
    with run.claimed(), pytest.raises(MnistgenError, match="in use by another mnistgen process"):
        train_gan(GAN_SMALL, gan_images(), run, show_progress=False)


# --------------------------------------------------------------------------- 9. clear errors, nothing written


@pytest.mark.parametrize("damage", ["missing key", "wrong shape", "wrong type"])
def test_a_checkpoint_that_does_not_fit_is_one_line_on_resume(tmp_path, damage):
    run = RunDir(tmp_path / "run")
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1), run, protocol=vae_protocol(), show_progress=False)
    checkpoint = run.load_checkpoint()
    if damage == "missing key":
        del checkpoint["optimizer"]
    elif damage == "wrong shape":
        checkpoint["model"]["encoder.hidden.weight"] = torch.zeros(3, 3)
    else:
        checkpoint["epoch"] = "one"
    torch.save(checkpoint, run.checkpoint)
    before = folder_bytes(run)
    with pytest.raises(MnistgenError) as error:
        train_vae(VAE_SMALL, run, resume=True, protocol=vae_protocol(), show_progress=False)
    assert str(error.value).startswith(f"{run.checkpoint} does not fit this run's models: ")
    assert "\n" not in str(error.value) and folder_bytes(run) == before


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda saved: saved["config"].update(epochs="3"), "--epochs must be a positive integer, got '3'"),
    (lambda saved: saved["config"].update(epochs=3.5), "--epochs must be a positive integer, got 3.5"),
    (lambda saved: saved["config"].update(lr=-0.1), "--lr must be a positive number, got -0.1"),
    (lambda saved: saved["config"].update(objective=None), "--objective must be one of"),
    (lambda saved: saved["config"].update(data=7), "data must be a JSON object"),
    (lambda saved: saved["config"].update(hidden=True), "--hidden must be a positive integer, got True"),
    (lambda saved: saved.update(config=None), "not a run's config"),
    (lambda saved: saved.clear(), "not a run's config"),
])
def test_a_config_json_with_wrong_types_is_one_line_naming_the_file(tmp_path, capsys, edit, expected):
    run = RunDir(tmp_path / "run")
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1), run, protocol=vae_protocol(), show_progress=False)
    saved = json.loads(run.config.read_text())
    edit(saved)
    run.config.write_text(json.dumps(saved))
    before = folder_bytes(run)
    assert main(["vae", "train", "--out", str(run.path), "--resume"]) == 1
    err = one_line_error(capsys)
    assert str(run.config) in err and expected in err
    assert folder_bytes(run) == before


def test_a_failed_write_keeps_the_previous_file_and_names_it(tmp_path):
    """The file system's refusal (here a real one: RLIMIT_FSIZE makes the kernel fail the write) is one
    MnistgenError naming the file; the previous checkpoint is intact and no temporary file is left."""
    path = tmp_path / "checkpoint.pt"
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from mnistgen.errors import MnistgenError
        from mnistgen.runs import save_checkpoint
        save_checkpoint({str(path)!r}, {{"w": torch.ones(10)}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))
        try:
            save_checkpoint({str(path)!r}, {{"w": torch.zeros(10**6)}})
        except MnistgenError as error:
            print(error)
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == f"cannot write {path}: File too large; checkpoint.pt is unchanged\n"
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(10))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# --------------------------------------------------------------------------- 10. no surprises


def test_resume_of_a_finished_run_says_there_is_nothing_left_and_writes_nothing(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    history = train_vae(VAE_SMALL, run, protocol=vae_protocol(), show_progress=False)
    before = folder_bytes(run)
    capsys.readouterr()
    again = train_vae(VAE_SMALL, run, resume=True, protocol=vae_protocol(), show_progress=False)
    assert again == history and folder_bytes(run) == before
    assert "all 2 epochs are done; nothing left to do" in capsys.readouterr().err
    gan = RunDir(tmp_path / "gan")
    train_gan(GAN_SMALL, gan_images(), gan, show_progress=False)
    before = folder_bytes(gan)
    train_gan(GAN_SMALL, gan_images(), gan, resume=True, show_progress=False)
    assert folder_bytes(gan) == before and "nothing left to do" in capsys.readouterr().err


def test_leftover_temporaries_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    run = RunDir(tmp_path / "run")
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1), run, protocol=vae_protocol(), show_progress=False)
    leftovers = [run.path / ".checkpoint.pt.k2j3h4.tmp", run.path / ".metrics.jsonl.abc.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    keep = run.path / "notes.tmp"  # not one of mnistgen's temporaries: left alone
    keep.write_text("mine")
    train_vae(VAE_SMALL, run, resume=True, protocol=vae_protocol(), show_progress=False)
    assert not any(p.exists() for p in leftovers) and keep.read_text() == "mine"


def test_ctrl_c_then_resume_still_ends_with_the_uninterrupted_weights(tmp_path):
    """The guards above must not change the mathematics: stop mid-epoch, resume, compare with one go."""
    whole, parts = RunDir(tmp_path / "whole"), RunDir(tmp_path / "parts")
    train_vae(VAE_SMALL, whole, protocol=vae_protocol(), show_progress=False)
    with pytest.raises(TrainingInterrupted):
        train_vae(VAE_SMALL, parts, protocol=vae_protocol(), stop=stop_after(4), show_progress=False)
    train_vae(VAE_SMALL, parts, resume=True, protocol=vae_protocol(), show_progress=False)
    for name, tensor in whole.load_checkpoint()["model"].items():
        assert torch.equal(tensor, parts.load_checkpoint()["model"][name]), name
    assert to_dict(VAE_SMALL) == parts.load_checkpoint()["config"]


# --------------------------------------------------------------------------- 11. run-folder faults


def cli(*args: str, prelude: str = "", limit: int = 0, memory: int = 0) -> subprocess.CompletedProcess:
    """``mnistgen ARGS`` in a fresh process, after ``prelude`` (Python run first), with writes past ``limit`` bytes
    refused by the kernel (RLIMIT_FSIZE: EFBIG, as ENOSPC would be) and ``memory`` bytes of address space where
    given."""
    script = textwrap.dedent(f"""
        import os, resource, signal, sys
        if {limit}:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        if {memory}:
            resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
        """) + textwrap.dedent(prelude) + f"from mnistgen.cli import main\nsys.exit(main({list(args)!r}))\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


SAMPLE_RUN = ("--dataset", "mnist-sample", "--hidden", "16", "--threads", "1")


@pytest.mark.parametrize("content", ["[]", '"x"'])
def test_a_replicas_json_that_is_not_an_object_is_one_line_naming_it(tmp_path, capsys, content):
    """A replica run with a pending checkpoint (a commit cut short) beside a replicas.json that holds no position."""
    run = RunDir(tmp_path / "run")
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1, seeds="1,2"), run, protocol=vae_protocol(), show_progress=False)
    seed_run = run.seed_run(1)
    (seed_run.path / "checkpoint.next.pt").write_bytes(seed_run.checkpoint.read_bytes())
    run.replicas_commit.write_text(content)
    before = folder_bytes(run)
    assert main(["vae", "train", "--out", str(run.path), "--resume", "--epochs", "2"]) == 1
    assert f"{run.replicas_commit}: not the replicas' saved position" in one_line_error(capsys)
    assert folder_bytes(run) == before


def test_a_killed_replica_writers_temporary_file_is_removed_when_the_run_is_claimed(tmp_path):
    """A replica run killed (SIGKILL) while it writes a seed's pending checkpoint leaves that writer's temporary file
    in RUN/seed=N; the next --resume removes it under the folder's lock, and trains to the end."""
    out = tmp_path / "run"
    killed = cli("vae", "train", "--out", str(out), "--epochs", "2", "--seeds", "1,2", "--checkpoint-seconds", "0",
                 *SAMPLE_RUN, prelude="""
        from mnistgen import runs
        real_write, pending_writes = runs.atomic_write, []

        def atomic_write(path, write, mode="wb"):
            if path.name == "checkpoint.next.pt":
                pending_writes.append(path)
                if len(pending_writes) == 3:  # epoch 2's first seed: killed in the middle of the write
                    def write(handle):
                        handle.write(b"half a checkpoint")
                        handle.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
            return real_write(path, write, mode)

        runs.atomic_write = atomic_write
        """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = list(out.glob("seed=1/.checkpoint.next.pt.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].read_bytes() == b"half a checkpoint"
    resumed = cli("vae", "train", "--out", str(out), "--resume", "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.rglob("*.tmp")) and [r["epoch"] for r in RunDir(out / "seed=1").read_metrics()] == [1, 2]


@pytest.mark.slow
def test_a_full_disk_at_a_later_save_leaves_no_metrics_line_beyond_the_checkpoint(tmp_path):
    """The kernel refuses the checkpoint of epoch 2 (a file-size limit, as a full disk): the metrics line of epoch 2,
    appended before it, is taken back, so metrics.jsonl and checkpoint.pt agree: one epoch each."""
    out = tmp_path / "run"
    assert cli("vae", "train", "--out", str(out), "--epochs", "1", *SAMPLE_RUN).returncode == 0
    before = (out / "checkpoint.pt").read_bytes()
    full = cli("vae", "train", "--out", str(out), "--resume", "--epochs", "2", limit=len(before) // 2)
    errors = [line for line in full.stderr.splitlines() if "error" in line]
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert len(errors) == 1 and f"cannot write {out / 'checkpoint.pt'}: File too large" in errors[0]
    assert (out / "checkpoint.pt").read_bytes() == before and not list(out.glob(".*.tmp"))
    run = load_run(out, device="cpu")
    assert run.epochs == 1 and [r["epoch"] for r in run.metrics] == [1]
    again = cli("vae", "train", "--out", str(out), "--resume", "--epochs", "2")
    assert again.returncode == 0 and "ignored" not in again.stderr, again.stderr
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]


@pytest.mark.slow
def test_resume_of_a_start_killed_before_its_config_says_what_to_run(tmp_path):
    """Killed (SIGKILL) before config.json was written: --resume names the command that starts the run, which works."""
    out = tmp_path / "run"
    killed = cli("vae", "train", "--out", str(out), "--epochs", "1", *SAMPLE_RUN, prelude="""
        from mnistgen.runs import RunDir
        RunDir.write_config = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert killed.returncode == -signal.SIGKILL and out.is_dir() and not (out / "config.json").exists()
    resumed = cli("vae", "train", "--out", str(out), "--resume")
    assert resumed.returncode == 1 and len(resumed.stderr.splitlines()) == 1, resumed.stderr
    assert resumed.stderr == (f"mnistgen: error: {out}: not a run folder (no config.json), nothing to resume; start "
                              f"the run with `mnistgen vae train --out {out}`, without --resume\n")
    assert cli("vae", "train", "--out", str(out), "--epochs", "1", *SAMPLE_RUN).returncode == 0


def test_threads_past_the_bound_of_this_machine_are_refused_but_a_stored_run_stays_usable(tmp_path):
    """--threads 3000 is refused (exit 2, one line naming the flag) before anything is created. A run trained where
    more threads were allowed (its config.json and checkpoint say 3000) is still read and sampled here; resuming it
    asks for --threads, and trains with a --threads this machine allows. Every command that could train runs in a
    process with 4 GiB of address space: without the bound it would fail for want of memory for the threads' stacks,
    not take the machine."""
    run = RunDir(tmp_path / "run")
    train_vae(dataclasses.replace(VAE_SMALL, epochs=1, threads=1), run, protocol=vae_protocol(), show_progress=False)
    saved = json.loads(run.config.read_text())
    saved["config"]["threads"] = 3000
    run.config.write_text(json.dumps(saved))
    checkpoint = run.load_checkpoint()
    checkpoint["config"]["threads"] = 3000
    torch.save(checkpoint, run.checkpoint)
    assert load_run(run.path, device="cpu").config.threads == 3000
    assert main(["vae", "sample", str(run.path), "--n", "2", "--out", str(tmp_path / "x.npy")]) == 0
    out = tmp_path / "new"
    for args in (("vae", "train", "--out", str(out), "--epochs", "1", "--dataset", "mnist-sample", "--threads", "3000"),
                 ("gan", "train", "--out", str(out), "--epochs", "1", "--dataset", "mnist-sample", "--threads", "3000"),
                 ("vae", "train", "--out", str(run.path), "--resume", "--epochs", "2")):
        refused = cli(*args, memory=4 << 30)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr[-2000:]
        assert ": error: --threads must be <= " in refused.stderr and not out.exists()
    train_vae(dataclasses.replace(VAE_SMALL, epochs=2, threads=1), run, resume=True, protocol=vae_protocol(),
              show_progress=False)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
