"""bench/gan_instance_noise.py, the measurement of instance noise on D's inputs through mnistgen's own loop: its
schedule over the run's steps, and that it changes nothing else of the training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bench_support import load_bench_module
from test_gan_options import SMALL, checkpoint, images

from mnistgen.models import gan as gan_model
from mnistgen.runs import RunDir
from mnistgen.train import gan as gan_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 3  # SMALL's batch of 32 on 100 images


def noisy_run(tmp_path, sigma: float):
    """SMALL's 3 epochs with instance noise ``sigma``; mnistgen's own functions are back afterwards."""
    bench = load_bench_module("gan_instance_noise")
    originals = gan_model.augmentation, gan_model.ema_decays, gan_train.step_inputs
    run = RunDir(tmp_path / f"noise-{sigma}")
    with bench.installed(bench.InstanceNoise(sigma, total_steps=SMALL.epochs * STEPS)) as noise:
        gan_train.train_gan(dataclasses.replace(SMALL, ema_warmup=True), images(), run, show_progress=False)
    assert (gan_model.augmentation, gan_model.ema_decays, gan_train.step_inputs) == originals
    return noise, checkpoint(run)


def test_the_noise_falls_linearly_to_zero_over_the_runs_steps(tmp_path):
    noise, _ = noisy_run(tmp_path, 0.6)
    assert noise.seen == pytest.approx([0.6, 0.6 * (1 - 3 / 9), 0.6 * (1 - 6 / 9)])  # each epoch's first step
    assert noise.step == SMALL.epochs * STEPS - 1  # the last step drawn
    plan = noise.draw(5000, torch.Generator().manual_seed(0))  # at the last step: sigma 0.6 / 9
    assert plan.shape == (5000, gan_model.D_CALLS, 784)
    assert plan.std().item() == pytest.approx(0.6 / 9, rel=0.01)


def test_without_noise_the_run_is_mnistgens_own_to_the_bit(tmp_path):
    run = RunDir(tmp_path / "plain")
    gan_train.train_gan(dataclasses.replace(SMALL, ema_warmup=True), images(), run, show_progress=False)
    plain = checkpoint(run)
    _, silent = noisy_run(tmp_path, 0.0)  # the noise's plumbing, adding zeros
    _, noisy = noisy_run(tmp_path, 0.6)
    for key in ("generator", "discriminator", "generator_ema"):
        for name, value in plain[key].items():
            assert torch.equal(silent[key][name], value), (key, name)  # z and the steps as without the plumbing
        assert any(not torch.equal(noisy[key][name], value) for name, value in plain[key].items()), key
