"""One step, every engine: the step a model's module defines (``mnistgen.models.vae.train_step`` with the VAE's forward
as its objective, ``mnistgen.models.gan.train_step``) is what every way of executing it trains: one run (with its
accelerators), replicas one after another, replicas stacked (vmap), and a 2-process torchrun job. Each test changes
the step or the objective on purpose, as a user editing ``models/`` would, and checks that each engine trains the
changed step: its weights land where a plain run of the changed step lands, and far from where the unchanged step
lands. The stacked engine is checked by a probe and steps aside where it would not compute the step.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mnistgen.accelerate.engines as engines
import mnistgen.models.gan as gan_models
import mnistgen.models.vae as vae_models
from mnistgen.config import DataConfig, GANConfig, VAEConfig, replica_config
from mnistgen.data.protocols import load_protocol
from mnistgen.distributions import log_bernoulli_logits
from mnistgen.runs import RunDir
from mnistgen.theory import kl_diag_gaussians
from mnistgen.train.gan import train_gan
from mnistgen.train.vae import train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = (11, 12)


def helping_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's step changed on purpose: G minimizes log D(G(z)) (it helps D) instead of -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="none").mean(
        dim=(-2, -1)).neg()


def twice_the_kl(self, x: torch.Tensor, eps: torch.Tensor, objective: str = "mc") -> torch.Tensor:
    """The VAE's objective changed on purpose: Eq. 1 with twice the KL (a beta-VAE with beta = 2)."""
    mean, logvar = self.encoder(x)
    logits = self.decoder.logits(mean + torch.exp(0.5 * logvar) * eps)
    return log_bernoulli_logits(x, logits) - 2.0 * kl_diag_gaussians(mean, logvar)


CHANGED_STEP_SCRIPT = """
import sys
import torch.nn.functional as F
import mnistgen.models.gan as gan_models
import mnistgen.models.vae as vae_models
from mnistgen.distributions import log_bernoulli_logits
from mnistgen.theory import kl_diag_gaussians
import torch

def helping_generator_loss(fake_logits):
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="none").mean(
        dim=(-2, -1)).neg()

def twice_the_kl(self, x, eps, objective="mc"):
    mean, logvar = self.encoder(x)
    logits = self.decoder.logits(mean + torch.exp(0.5 * logvar) * eps)
    return log_bernoulli_logits(x, logits) - 2.0 * kl_diag_gaussians(mean, logvar)

gan_models.generator_loss = helping_generator_loss
vae_models.VAE.forward = twice_the_kl
from mnistgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def small_hw(mnist_raw):
    protocol = load_protocol("hw", mnist_raw)
    return dataclasses.replace(protocol, train_images=protocol.train_images[:400].clone(),
                               eval_images=protocol.eval_images[:100].clone())


@pytest.fixture(scope="module")
def gan_images(mnist_raw):
    return load_protocol("gan", mnist_raw).train_images[:256].clone()  # 8 steps of 32


def weights(run: RunDir, keys: tuple[str, ...]) -> torch.Tensor:
    checkpoint = run.load_checkpoint()
    return torch.cat([tensor.flatten().double() for key in keys for tensor in checkpoint[key].values()])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def assert_trained_the_changed_step(mine: torch.Tensor, changed: torch.Tensor, unchanged: torch.Tensor,
                                    rounding: float) -> None:
    """``mine`` lands where the changed step's plain run lands (to float rounding) and far from the unchanged one."""
    assert relative(mine, changed) <= rounding
    assert relative(mine, unchanged) > 100 * rounding


# --------------------------------------------------------------------------- in this process


def gan_run(tmp_path: Path, name: str, images: torch.Tensor, **changes) -> RunDir:
    config = GANConfig(epochs=2, batch_size=32, grid_every=2, device="cpu", ema_decay=0.9,
                       data=DataConfig(offline=True), **changes)
    run = RunDir(tmp_path / name)
    train_gan(config, images, run, show_progress=False, say=lambda line: None)
    return run


GAN_KEYS = ("generator", "discriminator", "generator_ema")


def test_a_changed_gan_step_is_trained_by_one_run_and_both_replica_engines(gan_images, tmp_path, monkeypatch):
    unchanged = weights(gan_run(tmp_path, "unchanged", gan_images, seed=SEEDS[0], cpu_kernels="reference"), GAN_KEYS)
    monkeypatch.setattr(gan_models, "generator_loss", helping_generator_loss)
    changed = weights(gan_run(tmp_path, "changed", gan_images, seed=SEEDS[0], cpu_kernels="reference"), GAN_KEYS)
    one = gan_run(tmp_path, "one", gan_images, seed=SEEDS[0])  # auto: the accelerated calls where they apply
    one_by_one = gan_run(tmp_path, "one-by-one", gan_images, seeds="11,12")
    stacked = gan_run(tmp_path, "stacked", gan_images, seeds="11,12", cpu_kernels="reference")
    assert one_by_one.seed_run(SEEDS[0]).read_metrics()[-1]["trained_by"].startswith("2 replicas, one replica after")
    assert "batched" in stacked.seed_run(SEEDS[0]).read_metrics()[-1]["trained_by"]
    for run in (one, one_by_one.seed_run(SEEDS[0]), stacked.seed_run(SEEDS[0])):
        assert_trained_the_changed_step(weights(run, GAN_KEYS), changed, unchanged, rounding=1e-5)


def vae_run(tmp_path: Path, name: str, protocol, say=None, **changes) -> RunDir:
    config = dataclasses.replace(VAEConfig(epochs=2, device="cpu", data=DataConfig(offline=True)), **changes)
    run = RunDir(tmp_path / name)
    train_vae(config, run, protocol=protocol, show_progress=False, say=say or (lambda line: None))
    return run


def test_a_changed_vae_objective_is_trained_by_one_run_and_both_replica_engines(small_hw, tmp_path, monkeypatch):
    unchanged = weights(vae_run(tmp_path, "unchanged", small_hw, seed=SEEDS[0], cpu_kernels="reference"), ("model",))
    monkeypatch.setattr(vae_models.VAE, "forward", twice_the_kl)
    changed = weights(vae_run(tmp_path, "changed", small_hw, seed=SEEDS[0], cpu_kernels="reference"), ("model",))
    notes = []
    one = vae_run(tmp_path, "one", small_hw, say=notes.append, seed=SEEDS[0])  # auto: the accelerators' probes
    assert one.read_metrics()[-1]["trained_by"] == "reference"
    assert any("the probe found the ELBO" in note for note in notes), notes  # ... see the change and step aside
    stacked = vae_run(tmp_path, "stacked", small_hw, seeds="11,12")
    monkeypatch.setattr(engines, "check_stacked", lambda *args: "forced, for this test")
    one_by_one = vae_run(tmp_path, "one-by-one", small_hw, seeds="11,12")
    assert "batched" in stacked.seed_run(SEEDS[0]).read_metrics()[-1]["trained_by"]
    assert "one replica after another" in one_by_one.seed_run(SEEDS[0]).read_metrics()[-1]["trained_by"]
    for run in (one, one_by_one.seed_run(SEEDS[0]), stacked.seed_run(SEEDS[0])):
        assert_trained_the_changed_step(weights(run, ("model",)), changed, unchanged, rounding=1e-5)


# --------------------------------------------------------------------------- the stacked engine's probe


def loss_over_everything(monkeypatch):
    """G's loss as PyTorch's default reduction writes it, the mean over everything it is given: one replica's step is
    unchanged, but on stacked replicas it would mix them (the stacked step fails)."""
    monkeypatch.setattr(gan_models, "generator_loss", lambda fake_logits: F.binary_cross_entropy_with_logits(
        fake_logits, torch.ones_like(fake_logits)))


def stacked_calls_off(monkeypatch):
    """The stacked engine's calls of the modules differing from each replica's own (by 0.1% of each output), as a
    defect of the engine would: the stacked step runs, and silently computes another step."""
    call = engines.StackedModule.__call__
    monkeypatch.setattr(engines.StackedModule, "__call__", lambda self, *inputs: call(self, *inputs) * 1.001)


@pytest.mark.parametrize(("change", "reason"), [(loss_over_everything, "the stacked step fails"),
                                                (stacked_calls_off, "the probe found the step's values")],
                         ids=["loss-over-everything", "stacked-calls-off"])
def test_the_stacked_probe_catches_a_step_that_stacking_changes(change, reason, gan_images, tmp_path, monkeypatch):
    """The probe sees it, says why, and the replicas train one after another, each exactly as its own run."""
    change(monkeypatch)
    notes = []
    config = GANConfig(epochs=1, batch_size=32, device="cpu", seeds="11,12", cpu_kernels="reference",
                       data=DataConfig(offline=True))
    run = RunDir(tmp_path / "replicas")
    histories = train_gan(config, gan_images, run, show_progress=False, say=notes.append)
    assert notes == [f"mnistgen: note: the 2 replicas train one after another, not stacked: {reason}"] or (
        len(notes) == 1 and notes[0].startswith(f"mnistgen: note: the 2 replicas train one after another, not "
                                                f"stacked: {reason}")), notes
    for seed in SEEDS:
        assert histories[seed][-1]["trained_by"] == "2 replicas, one replica after another, G reference, D reference"
        separate = RunDir(tmp_path / f"separate-{seed}")
        train_gan(replica_config(config, seed), gan_images, separate, show_progress=False)
        assert torch.equal(weights(run.seed_run(seed), GAN_KEYS[:2]), weights(separate, GAN_KEYS[:2]))


def test_the_stacked_probe_refuses_a_model_that_vmap_cannot_run(small_hw, tmp_path, monkeypatch):
    """A decoder that draws random numbers in its forward (a dropout): vmap refuses the stacked step; the probe
    says so, and the replicas train one after another."""
    logits = vae_models.Decoder.logits
    monkeypatch.setattr(vae_models.Decoder, "logits", lambda self, z: F.dropout(logits(self, z), 0.1))
    notes = []
    vae_run(tmp_path, "replicas", small_hw, say=notes.append, seeds="11,12", epochs=1)
    assert any("not stacked: the stacked step fails" in note for note in notes), notes


def test_the_stacked_probe_passes_the_steps_as_written(gan_images, small_hw):
    """The probe's own reference: for SPEC's models and steps it finds nothing (else every run would step aside)."""
    config = GANConfig(device="cpu", ema_decay=0.99)
    replicas = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        generator, discriminator = gan_models.build_models(config, torch.device("cpu"))
        optimizers = gan_models.make_optimizers(generator, discriminator, config)
        replicas.append(engines.Replica({"generator": generator, "discriminator": discriminator},
                                        dict(zip(("generator", "discriminator"), optimizers, strict=True)),
                                        {"generator_ema": gan_models.weight_average(generator)}))

    def bind(replica):
        ema = (list(replica.averages["generator_ema"].parameters()), 0.99)
        return lambda real, z: gan_models.train_step(*replica.modules.values(), *replica.optimizers.values(),
                                                     real, z, ema=ema)

    inputs = [(gan_images[:8], torch.rand(8, config.zdim) * 2 - 1) for _ in SEEDS]
    assert engines.check_stacked(replicas, bind, inputs) is None


# --------------------------------------------------------------------------- torchrun


def torchrun_command(script: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(port), str(script), *args]


@pytest.mark.parametrize(("model", "arguments", "keys", "outliers"), [
    ("vae", ["vae", "train", "--epochs", "1", "--device", "cpu"], ("model",), 20),
    ("gan", ["gan", "train", "--epochs", "1", "--dataset", "mnist-sample", "--device", "cpu"],
     ("generator", "discriminator"), 5418),
])
@pytest.mark.slow
def test_a_changed_step_is_trained_by_a_torchrun_job(model, arguments, keys, outliers, mnist_dir, tmp_path):
    """The changed step (both changes above at once, in a script that applies them, then runs the CLI) under
    torchrun: the job ends where one process of the changed step ends (to the tolerance of tests/test_torchrun.py)
    and far from one process of the unchanged step."""
    from test_torchrun import environment, free_port, launch_job, weight_differences

    env = environment(mnist_dir)
    script = tmp_path / "changed_step.py"
    script.write_text(CHANGED_STEP_SCRIPT)
    runs = {name: tmp_path / name for name in ("unchanged", "changed", "ranks")}
    commands = {"unchanged": [sys.executable, "-m", "mnistgen", *arguments, "--out", str(runs["unchanged"])],
                "changed": [sys.executable, str(script), *arguments, "--out", str(runs["changed"])],
                "ranks": torchrun_command(script, free_port(), *arguments, "--out", str(runs["ranks"]))}
    for name, command in commands.items():
        code, _, err = launch_job(command, env, runs[name])
        assert code == 0, f"{name}:\n{err[-6000:]}"
    lr = VAEConfig().lr if model == "vae" else GANConfig().lr_g
    rtol, atol = (1e-5, 1e-6) if model == "vae" else (0.0, lr / 10)
    checkpoints = {name: torch.load(run / "checkpoint.pt", weights_only=True) for name, run in runs.items()}
    _, outside, _ = weight_differences(checkpoints["changed"], checkpoints["ranks"], keys, rtol, atol)
    assert outside <= outliers
    _, outside, total = weight_differences(checkpoints["unchanged"], checkpoints["ranks"], keys, rtol, atol)
    assert outside > total / 2
