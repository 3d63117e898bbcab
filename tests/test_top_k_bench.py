"""bench/gan_top_k.py, the measurement of top-k training of G through mnistgen's own loop: k's schedule, G's loss
over the k most real images against an independent computation, and that it changes nothing else of the training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from bench_support import load_bench_module
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gan_options import SMALL, checkpoint, images

from mnistgen.models import gan as gan_model
from mnistgen.runs import RunDir
from mnistgen.train import gan as gan_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_k_falls_by_one_percent_an_epoch_to_half_the_batch():
    bench = load_bench_module("gan_top_k")
    ks = [bench.kept(epoch, 64) for epoch in range(120)]
    assert ks[0] == 64 and ks[1] == 63 and ks[30] == 47  # 64 * 0.99^30 = 47.4
    assert all(a >= b for a, b in zip(ks, ks[1:], strict=False)) and min(ks) == 32 == ks[-1]
    assert ks.index(32) == 66  # 64 * 0.99^66 = 32.97: from then on half the batch
    assert bench.kept(1000, 7) == 4  # the half rounded up


@settings(max_examples=60, deadline=None)
@given(replicas=st.integers(0, 3), batch=st.integers(1, 12), k=st.integers(1, 15), seed=st.integers(0, 2 ** 31))
def test_gs_loss_is_the_mean_of_the_k_most_real_and_only_they_get_a_gradient(replicas, batch, k, seed):
    bench = load_bench_module("gan_top_k")
    shape = (replicas, batch, 1) if replicas else (batch, 1)
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                         requires_grad=True)
    loss = bench.top_k_generator_loss(logits, k)  # ([R],)
    flat = logits.detach().reshape(-1, batch)  # (R or 1, B)
    best = flat.sort(dim=1, descending=True).values[:, :min(k, batch)]
    expected = -F.logsigmoid(best).mean(dim=1)  # -log D(G(z)) of the k highest logits
    assert torch.allclose(loss.reshape(-1), expected, rtol=1e-12, atol=1e-14)
    loss.sum().backward()
    gradient = logits.grad.reshape(-1, batch)
    threshold = best[:, -1:]
    assert torch.all(gradient[flat < threshold] == 0)  # the images D finds least real do not pull G
    assert torch.all(gradient[flat > threshold] < 0)


def top_k_run(tmp_path, epochs: int):
    bench = load_bench_module("gan_top_k")
    originals = gan_model.ema_decays, gan_model.generator_loss
    run = RunDir(tmp_path / f"top-k-{epochs}")
    with bench.installed(len(images())) as seen:  # 3 steps an epoch
        gan_train.train_gan(dataclasses.replace(SMALL, epochs=epochs), images(), run, show_progress=False)
    assert (gan_model.ema_decays, gan_model.generator_loss) == originals
    return seen, checkpoint(run)


def test_the_first_epoch_is_mnistgens_own_to_the_bit_and_the_next_is_not(tmp_path):
    plain = {}
    for epochs in (1, 2):
        run = RunDir(tmp_path / f"plain-{epochs}")
        gan_train.train_gan(dataclasses.replace(SMALL, epochs=epochs), images(), run, show_progress=False)
        plain[epochs] = checkpoint(run)
    seen, one = top_k_run(tmp_path, 1)
    assert set(seen) == {0}  # the accelerators' probe tells step 0 too
    seen, two = top_k_run(tmp_path, 2)  # k = 31 of 32 in the second epoch
    assert set(seen) == {0, 1} and seen[-1] == 1
    for key in ("generator", "discriminator"):
        assert all(torch.equal(one[key][name], value) for name, value in plain[1][key].items()), key
        assert any(not torch.equal(two[key][name], value) for name, value in plain[2][key].items()), key
