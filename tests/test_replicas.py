"""Seeds as replicas: several seeds trained in one process into one run folder.

Replica k must take the steps of a separate run with seed k: bit for bit where the replicas are stepped one after
another (the CPU with an accelerator), and to float rounding where they are stacked with vmap over the reference step
(shown exactly in float64, where rounding is 1e-16, and to a tolerance in float32). Interruptions, resumes and a
kill in the middle of a commit must end where an uninterrupted replica run ends.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from mnistgen.accelerate import engines
from mnistgen.config import DataConfig, GANConfig, VAEConfig, replica_config
from mnistgen.data.protocols import load_protocol
from mnistgen.errors import MnistgenError, TrainingInterrupted
from mnistgen.runs import RunDir
from mnistgen.train import common
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = (11, 12)


def shrink(protocol, train: int = 600, held_out: int = 300):
    """The first images of a protocol: 6 steps of 100 per epoch."""
    return dataclasses.replace(
        protocol, train_images=protocol.train_images[:train].clone(), train_labels=protocol.train_labels[:train],
        eval_images=protocol.eval_images[:held_out], eval_labels=protocol.eval_labels[:held_out],
        test_images=protocol.test_images[:held_out], test_labels=protocol.test_labels[:held_out])


@pytest.fixture(scope="module")
def hw(mnist_raw):
    return shrink(load_protocol("hw", mnist_raw))


@pytest.fixture(scope="module")
def full(mnist_raw):
    return shrink(load_protocol("full", mnist_raw, validation_size=10000))


@pytest.fixture(scope="module")
def gan_images(mnist_raw):
    return load_protocol("gan", mnist_raw).train_images[:256].clone()  # 8 steps of 32


def vae_config(**changes) -> VAEConfig:
    return dataclasses.replace(VAEConfig(epochs=2, device="cpu", seeds=",".join(map(str, SEEDS)),
                                         data=DataConfig(offline=True)), **changes)


def gan_config(**changes) -> GANConfig:
    return dataclasses.replace(GANConfig(epochs=2, batch_size=32, grid_every=1, device="cpu",
                                         seeds=",".join(map(str, SEEDS)), data=DataConfig(offline=True)), **changes)


def checkpoint_of(run: RunDir) -> dict:
    return run.load_checkpoint()


def tensors(checkpoint: dict, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The weights and Adam moments under ``keys`` (models and optimizers), flattened by name."""
    out = {}
    for key in keys:
        value = checkpoint[key]
        if "state" in value:  # an optimizer's state dict
            for index, state in value["state"].items():
                for name, tensor in state.items():
                    out[f"{key}.{index}.{name}"] = tensor
        else:
            out.update({f"{key}.{name}": tensor for name, tensor in value.items()})
    return out


def without_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("seconds") and k != "trained_by"} for r in records]


VAE_KEYS = ("model", "optimizer")
GAN_KEYS = ("generator", "discriminator", "optimizer_g", "optimizer_d")


def separate_vae_runs(tmp_path, protocol, config):
    out = {}
    for seed in SEEDS:
        run = RunDir(tmp_path / f"separate-{seed}")
        out[seed] = (run, train_vae(replica_config(config, seed), run, protocol=protocol, show_progress=False))
    return out


def separate_gan_runs(tmp_path, images, config):
    out = {}
    for seed in SEEDS:
        run = RunDir(tmp_path / f"separate-{seed}")
        out[seed] = (run, train_gan(replica_config(config, seed), images, run, show_progress=False))
    return out


# --------------------------------------------------------------------------- the same trajectory as separate runs


@pytest.mark.parametrize("protocol_name", ["hw", "full"])
def test_vae_replicas_one_by_one_equal_separate_runs_bit_for_bit(protocol_name, hw, full, tmp_path):
    protocol = {"hw": hw, "full": full}[protocol_name]
    config = vae_config(protocol=protocol_name)  # auto: an accelerator applies on the CPU -> one by one
    run = RunDir(tmp_path / "replicas")
    histories = train_vae(config, run, protocol=protocol, show_progress=False)
    assert list(histories) == list(SEEDS)
    for seed, (separate, history) in separate_vae_runs(tmp_path, protocol, config).items():
        assert "one replica after another" in histories[seed][-1]["trained_by"]
        mine, theirs = tensors(checkpoint_of(run.seed_run(seed)), VAE_KEYS), tensors(checkpoint_of(separate),
                                                                                     VAE_KEYS)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert without_times(histories[seed]) == without_times(history)
        assert without_times(run.seed_run(seed).read_metrics()) == without_times(separate.read_metrics())


def test_vae_batched_replicas_equal_separate_runs_exactly_in_float64(hw, tmp_path):
    torch.set_default_dtype(torch.float64)
    try:
        config = vae_config(cpu_kernels="reference")
        run = RunDir(tmp_path / "replicas")
        histories = train_vae(config, run, protocol=hw, show_progress=False)
        for seed, (separate, history) in separate_vae_runs(tmp_path, hw, config).items():
            assert "batched (vmap" in histories[seed][-1]["trained_by"]
            mine, theirs = tensors(checkpoint_of(run.seed_run(seed)), VAE_KEYS), tensors(checkpoint_of(separate),
                                                                                         VAE_KEYS)
            assert mine["model.encoder.hidden.weight"].dtype == torch.float64
            for key in mine:  # one replica differs from its separate run only by the order of float sums
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-10, atol=1e-12, msg=key)
            for a, b in zip(histories[seed], history, strict=True):
                assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-12)
                assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(("objective", "samples"), [("iwae", 3), ("mc", 2)])
def test_vae_replicas_train_the_objective_they_are_given(objective, samples, hw, tmp_path):
    """--objective iwae and --train-samples K reach the batched step (K draws per image from each replica's own
    stream): float64 replicas equal separate runs of the same objective, and differ from SPEC's Eq. 2."""
    torch.set_default_dtype(torch.float64)
    try:
        config = vae_config(epochs=1, objective=objective, train_samples=samples)
        run = RunDir(tmp_path / "replicas")
        histories = train_vae(config, run, protocol=hw, show_progress=False)
        spec = train_vae(vae_config(epochs=1), RunDir(tmp_path / "spec"), protocol=hw, show_progress=False)
        for seed, (separate, history) in separate_vae_runs(tmp_path, hw, config).items():
            assert "batched (vmap" in histories[seed][-1]["trained_by"]  # no accelerator computes these
            assert histories[seed][-1]["train_elbo_is"] == history[-1]["train_elbo_is"]
            assert histories[seed][-1]["train_elbo"] == pytest.approx(history[-1]["train_elbo"], rel=1e-12)
            assert histories[seed][-1]["train_elbo"] != pytest.approx(spec[seed][-1]["train_elbo"], rel=1e-6)
            mine, theirs = checkpoint_of(run.seed_run(seed))["model"], checkpoint_of(separate)["model"]
            for key in mine:
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-10, atol=1e-12, msg=key)
    finally:
        torch.set_default_dtype(torch.float32)


def test_vae_batched_replicas_follow_separate_runs_in_float32(full, tmp_path):
    config = vae_config(cpu_kernels="reference", protocol="full")
    run = RunDir(tmp_path / "replicas")
    histories = train_vae(config, run, protocol=full, show_progress=False)
    for seed, (separate, history) in separate_vae_runs(tmp_path, full, config).items():
        for a, b in zip(histories[seed], history, strict=True):  # nats per image: rounding moves the 6th digit
            assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-5)
            assert a["validation_elbo"] == pytest.approx(b["validation_elbo"], rel=1e-5)
        mine, theirs = checkpoint_of(run.seed_run(seed))["model"], checkpoint_of(separate)["model"]
        for key in mine:  # an Adam step moves a weight by at most about lr = 1e-3
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=2e-4, msg=key)


def test_gan_replicas_one_by_one_equal_separate_runs_bit_for_bit(gan_images, tmp_path):
    config = gan_config()
    run = RunDir(tmp_path / "replicas")
    histories = train_gan(config, gan_images, run, show_progress=False)
    for seed, (separate, history) in separate_gan_runs(tmp_path, gan_images, config).items():
        assert "one replica after another" in histories[seed][-1]["trained_by"]
        mine, theirs = tensors(checkpoint_of(run.seed_run(seed)), GAN_KEYS), tensors(checkpoint_of(separate),
                                                                                     GAN_KEYS)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert without_times(histories[seed]) == without_times(history)
        assert run.seed_run(seed).grid_epochs() == separate.grid_epochs() == [0, 1, 2]
        for epoch in (0, 2):
            assert torch.equal(torch.from_numpy(run.seed_run(seed).load_grid(epoch)),
                               torch.from_numpy(separate.load_grid(epoch)))


def test_gan_batched_replicas_equal_separate_runs_exactly_in_float64(gan_images, tmp_path):
    torch.set_default_dtype(torch.float64)
    try:
        config = gan_config(cpu_kernels="reference")
        run = RunDir(tmp_path / "replicas")
        histories = train_gan(config, gan_images, run, show_progress=False)
        for seed, (separate, history) in separate_gan_runs(tmp_path, gan_images, config).items():
            assert "batched (vmap" in histories[seed][-1]["trained_by"]
            mine, theirs = tensors(checkpoint_of(run.seed_run(seed)), GAN_KEYS), tensors(checkpoint_of(separate),
                                                                                         GAN_KEYS)
            for key in mine:
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-9, atol=1e-12, msg=key)
            for a, b in zip(histories[seed], history, strict=True):
                for stat in ("d_loss", "g_loss", "d_real", "d_fake"):
                    assert a[stat] == pytest.approx(b[stat], rel=1e-10), stat
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_gan_replicas_keep_each_seeds_moving_average_of_g(kernels, gan_images, tmp_path):
    """--ema-decay with replicas: each replica's average equals its separate run's (bit for bit one by one, to
    float64 rounding batched), and the grids are the average's with G's own in grids/raw."""
    torch.set_default_dtype(torch.float64 if kernels == "reference" else torch.float32)
    try:
        config = gan_config(ema_decay=0.8, cpu_kernels=kernels)
        run = RunDir(tmp_path / "replicas")
        train_gan(config, gan_images, run, show_progress=False)
        averages = {}
        for seed, (separate, _) in separate_gan_runs(tmp_path, gan_images, config).items():
            mine, theirs = checkpoint_of(run.seed_run(seed)), checkpoint_of(separate)
            averages[seed] = mine["generator_ema"]
            assert not torch.equal(mine["generator_ema"]["linear.weight"], mine["generator"]["linear.weight"])
            for key, value in theirs["generator_ema"].items():
                if kernels == "auto":
                    assert torch.equal(mine["generator_ema"][key], value), key
                else:
                    torch.testing.assert_close(mine["generator_ema"][key], value, rtol=1e-10, atol=1e-12, msg=key)
            grid, raw = run.seed_run(seed).load_grid(2), run.seed_run(seed).load_grid(2, raw=True)
            assert torch.allclose(torch.from_numpy(grid).double(), torch.from_numpy(separate.load_grid(2)).double(),
                                  atol=1e-6)
            assert not torch.allclose(torch.from_numpy(grid).double(), torch.from_numpy(raw).double(), atol=1e-3)
        assert not torch.equal(averages[SEEDS[0]]["linear.weight"], averages[SEEDS[1]]["linear.weight"])
    finally:
        torch.set_default_dtype(torch.float32)


def test_the_replicas_differ_from_each_other(hw, tmp_path):
    """Each replica draws from its own seed's streams (a bug that shared one stream would make them equal)."""
    run = RunDir(tmp_path / "replicas")
    histories = train_vae(vae_config(epochs=1), run, protocol=hw, show_progress=False)
    a, b = (checkpoint_of(run.seed_run(seed))["model"] for seed in SEEDS)
    assert not torch.equal(a["encoder.hidden.weight"], b["encoder.hidden.weight"])
    assert histories[SEEDS[0]][0]["train_elbo"] != histories[SEEDS[1]][0]["train_elbo"]


# --------------------------------------------------------------------------- the run folder


def test_replica_run_folder_holds_one_ordinary_run_per_seed(hw, tmp_path):
    run = RunDir(tmp_path / "replicas")
    config = vae_config(epochs=1, seeds=None, seed=7, replicas=3)
    train_vae(config, run, protocol=hw, show_progress=False)
    saved = json.loads(run.config.read_text())
    assert saved["kind"] == "vae" and saved["config"]["replicas"] == 3
    assert [seed for seed, _ in run.replicas()] == [7, 8, 9]
    assert json.loads(run.replicas_commit.read_text()) == {"seeds": [7, 8, 9], "epoch": 1, "step": 0}
    for seed, seed_run in run.replicas():
        one = seed_run.read_config_as("vae", VAEConfig, "a VAE run")
        assert one == replica_config(config, seed) and one.seed == seed and one.replicas == 1
        assert checkpoint_of(seed_run)["config"]["seed"] == seed
        assert not (seed_run.path / common.PENDING_CHECKPOINT).exists()
        assert [r["epoch"] for r in seed_run.read_metrics()] == [1]
    assert not run.checkpoint.exists()


def test_a_new_replica_run_refuses_a_folder_that_holds_one(hw, tmp_path):
    run = RunDir(tmp_path / "replicas")
    train_vae(vae_config(epochs=1), run, protocol=hw, show_progress=False)
    with pytest.raises(MnistgenError, match="already holds a run: add --resume"):
        train_vae(vae_config(epochs=1), run, protocol=hw, show_progress=False)
    with pytest.raises(MnistgenError, match="must keep the seeds"):
        train_vae(vae_config(epochs=2, seeds="11,13"), run, resume=True, protocol=hw, show_progress=False)


# --------------------------------------------------------------------------- interruptions


def stop_after(steps: int):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > steps

    return stop


@pytest.mark.parametrize(("kernels", "first_stop", "stopped_at", "second_stop"), [
    ("auto", 2, 4, 2),  # one by one, 2 steps of each replica in turn: the stop is polled at steps 0, 2, 4
    ("reference", 3, 3, 5),  # batched: polled before every step
])
def test_vae_replicas_resume_mid_epoch_like_an_uninterrupted_run(kernels, first_stop, stopped_at, second_stop, full,
                                                                 tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "STEPS_PER_TURN", 2)
    config = vae_config(protocol="full", cpu_kernels=kernels)
    whole = RunDir(tmp_path / "whole")
    expected = train_vae(config, whole, protocol=full, show_progress=False)
    run = RunDir(tmp_path / "interrupted")
    with pytest.raises(TrainingInterrupted, match=f"after step {stopped_at} of 6"):
        train_vae(config, run, protocol=full, stop=stop_after(first_stop), show_progress=False)
    assert json.loads(run.replicas_commit.read_text())["step"] == stopped_at
    with pytest.raises(TrainingInterrupted, match="in epoch 2 after step 2"):  # across the epoch boundary
        train_vae(config, run, resume=True, protocol=full, stop=stop_after(second_stop), show_progress=False)
    histories = train_vae(config, run, resume=True, protocol=full, show_progress=False)
    for seed in SEEDS:
        mine, theirs = tensors(checkpoint_of(run.seed_run(seed)), VAE_KEYS), tensors(checkpoint_of(
            whole.seed_run(seed)), VAE_KEYS)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert without_times(run.seed_run(seed).read_metrics()) == without_times(expected[seed])
        assert without_times(histories[seed]) == without_times(expected[seed])


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_gan_replicas_resume_mid_epoch_like_an_uninterrupted_run(kernels, gan_images, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "STEPS_PER_TURN", 3)  # 8 steps an epoch: chunks 0-2, 3-5, 6-7
    config = gan_config(cpu_kernels=kernels, ema_decay=0.9)  # the averages too resume exactly
    whole = RunDir(tmp_path / "whole")
    expected = train_gan(config, gan_images, whole, show_progress=False)
    run = RunDir(tmp_path / "interrupted")
    with pytest.raises(TrainingInterrupted):
        train_gan(config, gan_images, run, stop=stop_after(5), show_progress=False)
    histories = train_gan(config, gan_images, run, resume=True, show_progress=False)
    for seed in SEEDS:
        mine, theirs = tensors(checkpoint_of(run.seed_run(seed)), (*GAN_KEYS, "generator_ema")), tensors(
            checkpoint_of(whole.seed_run(seed)), (*GAN_KEYS, "generator_ema"))
        assert "generator_ema.linear.weight" in mine and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert without_times(histories[seed]) == without_times(expected[seed])
        assert run.seed_run(seed).grid_epochs() == [0, 1, 2]


class Killed(Exception):
    """Stands for SIGKILL at a chosen point of a commit (nothing after it runs)."""


@pytest.mark.parametrize("where", ["before the commit", "after the commit"])
def test_a_commit_cut_short_is_settled_on_resume(where, hw, tmp_path, monkeypatch):
    """Killed between writing the replicas' pending checkpoints and renaming them: the resume must end like an
    uninterrupted run, whichever side of the commit record the kill fell on."""
    config = vae_config(epochs=3)
    whole = RunDir(tmp_path / "whole")
    expected = train_vae(config, whole, protocol=hw, show_progress=False)
    run = RunDir(tmp_path / "killed")
    train_vae(dataclasses.replace(config, epochs=1), run, protocol=hw, show_progress=False)
    real_commit = common.ReplicaRuns.commit

    def commit_cut_short(runs, *, epoch, step):
        if where == "after the commit":  # the record written and the first replica's file renamed, then killed
            common.write_json(runs.run.replicas_commit, {"seeds": list(SEEDS), "epoch": epoch, "step": step})
            common.os.replace(common.pending_checkpoint(runs.states[0].run), runs.states[0].run.checkpoint)
        raise Killed

    monkeypatch.setattr(common.ReplicaRuns, "commit", commit_cut_short)
    with pytest.raises(Killed):
        train_vae(dataclasses.replace(config, epochs=2), run, resume=True, protocol=hw, show_progress=False)
    monkeypatch.setattr(common.ReplicaRuns, "commit", real_commit)
    pending = [run.seed_run(s).path / common.PENDING_CHECKPOINT for s in SEEDS]
    assert any(p.exists() for p in pending)  # the kill left a half-done commit behind
    histories = train_vae(config, run, resume=True, protocol=hw, show_progress=False)
    for seed in SEEDS:
        mine, theirs = tensors(checkpoint_of(run.seed_run(seed)), VAE_KEYS), tensors(checkpoint_of(
            whole.seed_run(seed)), VAE_KEYS)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert without_times(run.seed_run(seed).read_metrics()) == without_times(expected[seed])
        assert without_times(histories[seed]) == without_times(expected[seed])
    assert not any(p.exists() for p in pending)


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_trains_replicas_and_prints_each_seed(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mnistgen", "vae", "train", "--dataset", "mnist-sample", "--epochs", "1",
               "--replicas", "2", "--seed", "5", "--out", str(out), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith(f"run folder {out / 'seed=5'}") and lines[1].endswith(
        f"run folder {out / 'seed=6'}")
    again = subprocess.run([*command[:-4], "--seeds", "5,6", "--replicas", "2", "--out", str(tmp_path / "x")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "give --seeds or --replicas, not both" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
