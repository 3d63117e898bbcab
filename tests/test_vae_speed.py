"""mnistgen's training loop does the same mathematics as the plain PyTorch loop that bench/vae_speed.py
times it against, on the reference path and with each accelerator: same seed and data -> the same loss at
every step and the same weights, to float tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_support import load_bench_module, vae_epochs

from mnistgen.accelerate.vae import NATIVE, TORCH
from mnistgen.config import VAEConfig
from mnistgen.device import seed_everything, stream_seed
from mnistgen.models.vae import build_model
from mnistgen.train.vae import NOISE_STREAM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("accelerator", [None, TORCH, NATIVE], ids=["reference", "torch", "native"])
def test_mnistgen_loop_follows_the_plain_loop(mnist_raw, accelerator, request):
    if accelerator is NATIVE:
        request.getfixturevalue("needs_native_kernels")
    baseline = load_bench_module("vae_baseline")
    images = torch.from_numpy((mnist_raw.train_images[:1000].reshape(1000, 784) >= 128).astype(np.float32))
    config = VAEConfig(device="cpu")
    seed_everything(config.seed)
    plain = baseline.PlainVAE.copy_of(build_model(config, torch.device("cpu")))  # the weights mnistgen starts from
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=config.lr)  # PyTorch's default (for-loop) Adam
    plain_order = torch.Generator().manual_seed(config.seed)
    plain_noise = torch.Generator().manual_seed(stream_seed(config.seed, NOISE_STREAM))

    model, _, elbos = vae_epochs(config, accelerator, images, 3)  # 30 steps with mnistgen's fused Adam
    fast_losses, plain_losses = [-elbo / config.batch_size for elbo in elbos], []
    for _ in range(3):
        plain_losses += baseline.baseline_epoch(plain, plain_optimizer, images, plain_order, plain_noise,
                                                config.batch_size)
    assert len(fast_losses) == 30
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=2e-5)
    assert fast_losses[-1] < fast_losses[0] - 100  # it is learning: the comparison is not between two flat lines
    pairs = [("encoder.hidden", plain.enc), ("encoder.mean", plain.enc_mu), ("encoder.logvar", plain.enc_logvar),
             ("decoder.hidden", plain.dec), ("decoder.output", plain.dec_out)]
    # Weights equal to 2e-5, except at most a handful of the 392,000 encoder weights: a gradient summed to
    # nearly zero from terms that cancel (a pixel seen in few images) has a rounding-dependent sign, and Adam
    # turns a sign into a step of up to lr; so those stay within one step.
    state = model.state_dict()
    for name, module in pairs:
        for kind in ("weight", "bias"):
            difference = (state[f"{name}.{kind}"] - getattr(module, kind).detach()).abs()
            assert int((difference > 2e-5).sum()) <= 10 and difference.max().item() < config.lr, (name, kind)
