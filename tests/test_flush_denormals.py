"""Subnormal floats flushed (the default; ``--no-flush-denormals`` for IEEE): the CPU flushes them to zero while the
VAE or the GAN trains, and only then.

What it must not change is the mathematics: where training produces subnormals (the reason for the flag: the VAE's
importance weights, the GAN's sigmoid pixels near 0), a step taken with them flushed lands where the IEEE step
lands, to float rounding. Its speed is measured in bench/flush_denormals.py, not here.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mnistgen.cli import main
from mnistgen.config import DataConfig, GANConfig, VAEConfig
from mnistgen.data.protocols import Protocol
from mnistgen.losses import vae_elbo
from mnistgen.models import gan as gan_models
from mnistgen.models import vae as vae_models
from mnistgen.models.gan import Discriminator, Generator
from mnistgen.models.vae import VAE
from mnistgen.runs import RunDir
from mnistgen.train import gan as gan_training
from mnistgen.train import vae as vae_training
from mnistgen.train.common import flushed_denormals, subnormals_flushed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny  # 1.18e-38: below it (and above 0) a float32 is subnormal


def is_flushing() -> bool:
    """Whether this thread's arithmetic flushes: twice a subnormal is 0 there, a subnormal under IEEE."""
    return float(torch.tensor(1e-41) * 2.0) == 0.0


@pytest.fixture
def random_data() -> Protocol:
    """200 random binary "images" (2 steps of 100) and 100 held out."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(300, 784, generator=generator) < 0.15).float()
    labels = torch.zeros(300, dtype=torch.long)
    return Protocol(name="hw", train_images=images[:200], train_labels=labels[:200], eval_images=images[200:],
                    eval_labels=labels[200:], test_images=images[200:], test_labels=labels[200:], eval_name="test",
                    dynamic_binarization=False, provenance={"dataset": "random"})


BASE = VAEConfig(epochs=1, device="cpu", hidden=32, objective="iwae", train_samples=3, data=DataConfig(offline=True))


@pytest.mark.parametrize("flush", [True, False])
def test_subnormals_are_flushed_during_training_and_not_after_it(tmp_path, random_data, flush):
    seen = []

    def stop() -> bool:  # polled before every step, inside the training
        seen.append((is_flushing(), subnormals_flushed()))
        return False

    assert not is_flushing()
    vae_training.train_vae(dataclasses.replace(BASE, flush_denormals=flush), RunDir(tmp_path), protocol=random_data,
                           stop=stop, show_progress=False, say=lambda line: None)
    assert seen == [(flush, flush)] * 2
    assert not is_flushing()  # IEEE arithmetic again after the training


@pytest.mark.parametrize("flush", [True, False])
def test_the_gan_flushes_during_training_and_not_after_it(tmp_path, flush):
    seen = []

    def stop() -> bool:
        seen.append((is_flushing(), subnormals_flushed()))
        return False

    images = torch.rand((64, 1, 28, 28), generator=torch.Generator().manual_seed(0))  # 2 steps of 32
    config = GANConfig(epochs=1, batch_size=32, device="cpu", flush_denormals=flush)
    gan_training.train_gan(config, images, RunDir(tmp_path), stop=stop, show_progress=False, say=lambda line: None)
    assert seen == [(flush, flush)] * 2
    assert not is_flushing()


def test_the_block_returns_to_ieee_arithmetic_after_an_error():
    with pytest.raises(RuntimeError), flushed_denormals(True):
        assert is_flushing()
        raise RuntimeError("a step failed")
    assert not is_flushing()


def test_threads_started_before_the_flag_are_named_in_a_note(monkeypatch):
    """Where the probe finds a thread that keeps IEEE arithmetic, the user is told in one line."""
    import mnistgen.train.common as common

    notes = []
    monkeypatch.setattr(common, "subnormals_flushed", lambda: False)
    with flushed_denormals(True, notes.append):
        pass
    assert len(notes) == 1 and "flushed to zero only on the threads torch starts" in notes[0], notes


def wide_model() -> VAE:
    """SPEC's VAE with its decoder's output layer scaled so that the K draws of one image differ by hundreds of
    nats in log p(x|z): most normalized importance weights are then 0 or subnormal, as late in a real training."""
    torch.manual_seed(0)
    model = VAE()
    with torch.no_grad():
        model.decoder.output.weight.mul_(60.0)
    return model


def test_a_step_with_flushed_subnormals_lands_where_the_ieee_step_lands():
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(100, 784, generator=generator) < 0.15).float()
    eps = torch.randn(20, 100, 2, generator=generator)  # K = 20 draws per image

    model = wide_model()
    with torch.no_grad():  # the reason for the flag, computed here under IEEE arithmetic: each draw's log weight
        log_weights = vae_elbo(model, x.repeat(20, 1), eps.reshape(1, -1, 2), importance_weighted=True)  # row k*B+b
        weights = torch.softmax(log_weights.view(20, 100), dim=0)  # (K, B): the normalized importance weights
    assert int(((weights > 0) & (weights < SMALLEST_NORMAL)).sum()) > 0, "no subnormal weight: the test tests nothing"

    results = {}
    for flush in (False, True):
        model = wide_model()
        optimizer = vae_models.make_optimizer(model, VAEConfig(lr=1e-3))
        with flushed_denormals(flush):
            values = [float(vae_models.train_step(model, optimizer, x, eps, "iwae")) for _ in range(3)]
        results[flush] = values, {name: value.clone() for name, value in model.state_dict().items()}
    (ieee_values, ieee_weights), (flushed_values, flushed_weights) = results[False], results[True]
    assert flushed_values == pytest.approx(ieee_values, rel=1e-6)
    for name, value in ieee_weights.items():
        torch.testing.assert_close(flushed_weights[name], value, rtol=1e-5, atol=1e-7, msg=name)
    changed = [name for name, value in ieee_weights.items() if not torch.equal(value, wide_model().state_dict()[name])]
    assert len(changed) == len(ieee_weights)  # every tensor trained: the comparison compares steps


def saturated_gan() -> tuple[Generator, Discriminator]:
    """SPEC's G and D with G's last bias at -88: sigmoid(-88 +- a few) puts many generated pixels below float32's
    smallest normal number, as G's background pixels late in a real training. D's biases are drawn away from
    SPEC's initial zeros, as after any training: with zero biases, D's first ReLU would sit at its kink on those
    pixels, where a subnormal input (IEEE) passes the gradient and its flushed zero does not, like any rounding
    difference at a kink."""
    torch.manual_seed(0)
    generator, discriminator = Generator(), Discriminator()
    with torch.no_grad():
        generator.conv3.bias.fill_(-88.0)
        for layer in (discriminator.conv1, discriminator.conv2, discriminator.conv3, discriminator.linear):
            layer.bias.uniform_(-0.1, 0.1)
    return generator, discriminator


def test_a_gan_step_on_subnormal_pixels_lands_where_the_ieee_step_lands():
    generator = torch.Generator().manual_seed(2)
    real = torch.rand((32, 1, 28, 28), generator=generator).pow(4)
    z = torch.rand((3, 32, 64), generator=generator) * 2 - 1
    with torch.no_grad():  # the reason for the flag, under IEEE arithmetic: subnormal generated pixels
        fake = saturated_gan()[0](z[0])
    assert int(((fake > 0) & (fake < SMALLEST_NORMAL)).sum()) > 100, "no subnormal pixel: the test tests nothing"

    results = {}
    for flush in (False, True):
        g, d = saturated_gan()
        optimizer_g, optimizer_d = gan_models.make_optimizers(g, d, GANConfig())
        with flushed_denormals(flush):
            stats = [gan_models.train_step(g, d, optimizer_g, optimizer_d, real, z[i]) for i in range(3)]
        results[flush] = torch.stack(stats), {**{f"G.{k}": v.clone() for k, v in g.state_dict().items()},
                                              **{f"D.{k}": v.clone() for k, v in d.state_dict().items()}}
    (ieee_stats, ieee_weights), (flushed_stats, flushed_weights) = results[False], results[True]
    torch.testing.assert_close(flushed_stats, ieee_stats, rtol=1e-5, atol=1e-6)
    for name, value in ieee_weights.items():
        torch.testing.assert_close(flushed_weights[name], value, rtol=1e-5, atol=1e-7, msg=name)
    initial_d = saturated_gan()[1].state_dict()
    assert all(not torch.equal(ieee_weights[f"D.{k}"], v) for k, v in initial_d.items())  # D trained: compared


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_the_flag_is_saved_and_may_change_on_resume(tmp_path, capsys, model):
    folder = tmp_path / "run"
    common = [model, "train", "--out", str(folder), "--device", "cpu", "--offline", "--dataset", "mnist-sample"]
    common += ["--hidden", "32", "--objective", "iwae", "--train-samples", "2"] if model == "vae" else \
        ["--batch-size", "1000", "--grid-every", "1"]
    assert main([*common, "--epochs", "1"]) == 0
    assert json.loads((folder / "config.json").read_text())["config"]["flush_denormals"] is True  # the default
    assert main([*common, "--epochs", "2", "--resume", "--no-flush-denormals"]) == 0  # how to compute, not what
    assert json.loads((folder / "config.json").read_text())["config"]["flush_denormals"] is False
    assert main([*common, "--epochs", "3", "--resume", "--flush-denormals"]) == 0
    assert [r["epoch"] for r in RunDir(folder).read_metrics()] == [1, 2, 3]
    assert json.loads((folder / "config.json").read_text())["config"]["flush_denormals"] is True
    assert (VAEConfig().flush_denormals, GANConfig().flush_denormals) == (True, True)  # flushed unless refused
    capsys.readouterr()
