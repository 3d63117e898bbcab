"""``torchrun --nproc-per-node 2 -m mnistgen vae|gan train`` for real: torchrun's own launcher, two processes on this
CPU (gloo), every connection on 127.0.0.1 (torchrun's store at --master-addr 127.0.0.1, gloo bound to the loopback
interface by GLOO_SOCKET_IFNAME=lo).

Each job is compared with the same command in one process: --batch-size is the global batch and every rank draws
the random numbers of the whole batch (the same as one process) and trains on its half, so the two take the same
steps up to float rounding: the same config, metrics, random generator states (exactly) and weights (to float
tolerance); one set of files (rank 0 writes) and each message once. Ctrl-C (SIGINT to torchrun, which passes it on)
saves after the same step on both ranks, and --resume under torchrun ends with the very weights of the uninterrupted
job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from mnistgen.config import GANConfig

pytestmark = pytest.mark.slow  # whole trainings, processes and pipelines: `pytest -m slow`

VAE_TRAIN = ["vae", "train", "--epochs", "2", "--device", "cpu"]  # hw protocol: 10,000 images, 2 x 100 steps
# 15 steps of 256, with lookahead (steps 4, 8 and 12 sync): each rank syncs its copy of the weights; and the MMD
# term in G's objective, of the global batch: each rank gathers the others' shares
GAN_TRAIN = ["gan", "train", "--epochs", "1", "--dataset", "mnist-sample", "--device", "cpu", "--lookahead-steps", "4",
             "--mmd-weight", "10"]
RTOL, ATOL = 1e-5, 1e-6
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(mnist_dir: Path) -> dict[str, str]:
    return dict(os.environ, MNISTGEN_DATA_DIR=str(mnist_dir), MNISTGEN_OFFLINE="1", GLOO_SOCKET_IFNAME="lo",
                PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                PYTHONFAULTHANDLER="1")  # a rank that dies of a signal prints its Python stack


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), "-m", "mnistgen", *args]


def one_process(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnistgen", *args]


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    """Wait for ``process``; past the time limit, SIGTERM (torchrun passes it on to its workers), then kill."""
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            out, err = process.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"{process.args} did not end in {TIMEOUT_S} s:\n{err[-3000:]}")
    return process.returncode, out, err


def launch(command: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    return finish(start(command, env))


WORKER_KILLED_BY_A_SIGNAL = re.compile(r"Signal \d+ \(SIG[A-Z]+\) received by PID")  # torchrun's failure summary


def launch_job(command: list[str], env: dict[str, str], out: Path) -> tuple[int, str, str]:
    """A job that starts a new run in ``out``. Where a worker died of a signal (torchrun reports "Signal 6
    (SIGABRT) received by PID ...") rather than exiting, the job runs once more from an empty ``out``, with a warning
    that keeps the first stderr: a random abort outside mnistgen's code gets a second try, while a bug of mnistgen's
    collectives (every rank's calls the same in every run) fails both."""
    code, out_text, err = launch(command, env)
    if code != 0 and WORKER_KILLED_BY_A_SIGNAL.search(err):
        warnings.warn(f"a worker of {command} died of a signal; running the job once more:\n{err[-6000:]}",
                      stacklevel=2)
        shutil.rmtree(out, ignore_errors=True)
        code, out_text, err = launch(command, env)
    return code, out_text, err


def mnistgen_lines(text: str, run: Path) -> list[str]:
    """mnistgen's own lines of an output (not torchrun's), with the run folder's path as RUN."""
    return [line.replace(str(run), "RUN") for line in text.splitlines() if line.startswith(("mnistgen:", "epoch "))]


def checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def weight_differences(one: dict, ranks: dict, keys: tuple[str, ...], rtol: float = RTOL,
                       atol: float = ATOL) -> tuple[float, int, int]:
    """(max abs difference, elements outside rtol/atol, elements) over the state dicts ``keys`` of two checkpoints."""
    worst, outside, total = 0.0, 0, 0
    for key in keys:
        assert one[key].keys() == ranks[key].keys()
        for name, expected in one[key].items():
            actual = ranks[key][name]
            worst = max(worst, (actual - expected).abs().max().item())
            outside += int((~torch.isclose(actual, expected, rtol=rtol, atol=atol)).sum())
            total += expected.numel()
    return worst, outside, total


def assert_same_run(one: Path, ranks: Path, keys: tuple[str, ...], outliers: int, rtol: float = RTOL,
                    atol: float = ATOL, largest: float = 1e-4) -> None:
    """The two run folders hold the same files, config, metrics and generator states, and the same weights to float
    tolerance (all but ``outliers`` elements within rtol/atol, none off by ``largest`` or more)."""
    assert sorted(p.name for p in ranks.iterdir()) == sorted(p.name for p in one.iterdir())  # no rank-1 output
    if (one / "grids").is_dir():
        assert sorted(p.name for p in (ranks / "grids").iterdir()) == sorted(p.name for p in (one / "grids").iterdir())
    config_one, config_ranks = (json.loads((run / "config.json").read_text()) for run in (one, ranks))
    assert config_ranks["kind"] == config_one["kind"] and config_ranks["config"] == config_one["config"]
    metrics_one, metrics_ranks = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                                  for run in (one, ranks))
    assert [r["epoch"] for r in metrics_ranks] == [r["epoch"] for r in metrics_one]
    for mine, theirs in zip(metrics_ranks, metrics_one, strict=True):
        assert mine.keys() == theirs.keys() and mine["trained_by"] == theirs["trained_by"]
        for name in mine.keys() - {"trained_by", "seconds", "train_seconds"}:
            assert mine[name] == pytest.approx(theirs[name], rel=RTOL), name
    state_one, state_ranks = checkpoint(one), checkpoint(ranks)
    assert (state_ranks["epoch"], state_ranks["step"]) == (state_one["epoch"], state_one["step"])
    for name, generator_state in state_one["generators"].items():  # every draw was the one process's draw
        assert torch.equal(state_ranks["generators"][name], generator_state), name
    worst, outside, total = weight_differences(state_one, state_ranks, keys, rtol, atol)
    print(f"{one.parent.name}: max abs weight difference {worst:.3g}, {outside} of {total} outside rtol {rtol} "
          f"atol {atol}")
    assert outside <= outliers and worst < largest, (worst, outside)


# --------------------------------------------------------------------------- the jobs


@pytest.fixture(scope="module")
def vae_runs(mnist_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("torchrun-vae")
    env = environment(mnist_dir)
    results = {"root": root, "env": env}
    for name, command in (("ranks", torchrun), ("one", one_process)):
        results[name] = launch_job(command(*VAE_TRAIN, "--out", str(root / name)), env, root / name)
    return results


@pytest.fixture(scope="module")
def gan_runs(tmp_path_factory, mnist_dir) -> dict:
    root = tmp_path_factory.mktemp("torchrun-gan")
    env = environment(mnist_dir)
    results = {"root": root, "env": env}
    for name, command in (("ranks", torchrun), ("one", one_process)):
        results[name] = launch_job(command(*GAN_TRAIN, "--out", str(root / name)), env, root / name)
    return results


def check_messages(runs: dict) -> None:
    """Both end well; the job prints what one process prints (each line once: rank 0 alone speaks)."""
    root = runs["root"]
    (code_ranks, out_ranks, err_ranks), (code_one, out_one, err_one) = runs["ranks"], runs["one"]
    assert code_ranks == 0, err_ranks[-6000:]
    assert code_one == 0, err_one[-6000:]
    assert len(mnistgen_lines(out_ranks, root / "ranks")) == 1
    assert mnistgen_lines(out_ranks, root / "ranks") == mnistgen_lines(out_one, root / "one")
    assert mnistgen_lines(err_ranks, root / "ranks") == mnistgen_lines(err_one, root / "one")


def test_vae_under_torchrun_equals_one_process(vae_runs):
    check_messages(vae_runs)
    # Adam's step m / sqrt(v) turns the rounding of a gradient that nearly cancels into a visible difference for a
    # handful of the encoder's first-layer weights (as between the accelerators in test_vae_distributed)
    assert_same_run(vae_runs["root"] / "one", vae_runs["root"] / "ranks", ("model",), outliers=20)


def test_gan_under_torchrun_equals_one_process(gan_runs):
    check_messages(gan_runs)
    # Each rank computes its half of the batch (the C kernels and PyTorch's products on 128 images, not 256) and
    # the halves' gradients are summed by the all-reduce: the sums run in another order. A gradient that is zero
    # but for rounding then has a rounding-dependent sign, which Adam's early steps turn into a step of about lr.
    # Measured after these 15 steps (lr = 2e-4): on some CPUs the runs agree to 3e-8; on others 1.5% (PyTorch's
    # accelerators) to 2.2% (the C kernels) of the weights differ by more than lr/10, none by more than lr/2. A job
    # whose ranks both train on the first half differs by more than lr/10 in 97% of the weights and by more than lr
    # in 75%. So: at most 5% beyond lr/10, none beyond lr.
    lr = GANConfig().lr_g
    assert GANConfig().lr_d == lr
    assert_same_run(gan_runs["root"] / "one", gan_runs["root"] / "ranks",
                    ("generator", "discriminator", "generator_slow", "discriminator_slow"),
                    outliers=2 * 5418, rtol=0.0, atol=lr / 10, largest=lr)  # 5% of G's and D's 2 x 108,370 weights


def test_ctrl_c_under_torchrun_saves_once_and_resume_finishes_the_run(vae_runs):
    """SIGINT to torchrun during training: both ranks stop after the same step, rank 0 saves and says so once;
    --resume under torchrun then ends with the weights of the uninterrupted run in one process (to float tolerance)
    and of the uninterrupted job (exactly)."""
    run, env = vae_runs["root"] / "interrupted", vae_runs["env"]
    process = start(torchrun(*VAE_TRAIN, "--out", str(run)), env)
    deadline = time.monotonic() + TIMEOUT_S
    while not (run / "config.json").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # rank 0 writes config.json once both ranks are set up, just before the first step
    time.sleep(0.25)  # into the first epoch (about 0.7 s each here; stopping before the first step is fine too)
    assert process.poll() is None, finish(process)
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process)
    assert code != 0
    lines = [line for line in mnistgen_lines(err, run) if not line.startswith("mnistgen: note:")]  # no compiler: a note
    assert len(lines) == 1 and lines[0].startswith("mnistgen: interrupted in epoch") and "--resume" in lines[0], err
    state = checkpoint(run)
    assert (state["epoch"], state["step"]) < (2, 0)
    metrics = run / "metrics.jsonl"
    assert (len(metrics.read_text().splitlines()) if metrics.is_file() else 0) == state["epoch"]
    print(f"interrupted after epoch {state['epoch']}, step {state['step']}")

    code, out, err = launch(torchrun("vae", "train", "--out", str(run), "--resume"), env)
    assert code == 0, err[-3000:]
    notes = [line for line in mnistgen_lines(err, run) if line.startswith("mnistgen: note:")]  # no compiler: 1
    assert len(mnistgen_lines(out, run)) == 1 and mnistgen_lines(err, run) == notes and len(notes) <= 1, (out, err)
    assert_same_run(vae_runs["root"] / "one", run, ("model",), outliers=20)
    uninterrupted = checkpoint(vae_runs["root"] / "ranks")["model"]  # and exactly the uninterrupted job's weights
    assert all(torch.equal(weights, uninterrupted[name]) for name, weights in checkpoint(run)["model"].items())


def test_errors_stop_every_rank_and_print_once(gan_runs):
    """A check that rank 0 alone makes (the run folder) and one that every rank makes (the global batch): all
    processes stop at once, the error is printed once, nothing is written."""
    root, env = gan_runs["root"], gan_runs["env"]
    before = (root / "ranks" / "checkpoint.pt").read_bytes()
    for args, message in (([], "already holds a run"), (["--batch-size", "255"], "--batch-size 255 is the global")):
        out_folder = root / "ranks" if not args else root / "refused"
        code, out, err = launch(torchrun(*GAN_TRAIN, "--out", str(out_folder), *args), env)
        assert code != 0
        lines = mnistgen_lines(err, out_folder)
        assert len(lines) == 1 and lines[0].startswith("mnistgen: error:") and message in lines[0], err
        assert not any("/mnistgen/" in line for line in err.splitlines() if line.strip().startswith("File ")), err
    assert (root / "ranks" / "checkpoint.pt").read_bytes() == before
    assert not (root / "refused").exists()
