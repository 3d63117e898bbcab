"""bench/gan_mmd.py, the measurement of an MMD term in G's loss through mnistgen's own loop: the estimate against an
independent computation, G's step against the written objective, and that it changes nothing else of the training."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest
import torch
from bench_support import load_bench_module
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gan_options import SMALL, checkpoint, images

from mnistgen.losses import generator_loss
from mnistgen.models import gan as gan_model
from mnistgen.runs import RunDir
from mnistgen.train import gan as gan_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pairwise_mmd(x: list[torch.Tensor], y: list[torch.Tensor], bandwidths) -> float:
    """MMD^2's unbiased estimate pair by pair, in Python floats."""
    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        squared = sum((float(p) - float(q)) ** 2 for p, q in zip(a.flatten(), b.flatten(), strict=True))
        return sum(math.exp(-squared / (2 * s)) for s in bandwidths)

    def within(a: list[torch.Tensor]) -> float:
        return sum(k(p, q) for p, q in itertools.permutations(a, 2)) / (len(a) * (len(a) - 1))

    across = sum(k(p, q) for p in x for q in y) / (len(x) * len(y))
    return within(x) + within(y) - 2 * across


@settings(max_examples=25, deadline=None)
@given(replicas=st.integers(0, 2), batch=st.integers(2, 5), seed=st.integers(0, 2 ** 31))
def test_the_estimate_is_the_mean_over_distinct_pairs_within_less_twice_across(replicas, batch, seed):
    bench = load_bench_module("gan_mmd")
    draws = torch.Generator().manual_seed(seed)
    shape = (replicas, batch, 1, 28, 28) if replicas else (batch, 1, 28, 28)
    # images a few pixels apart, so that every bandwidth's kernel is far from 0 and from 1
    base = torch.rand(shape, generator=draws, dtype=torch.float64)
    generated = base + 0.15 * torch.rand(shape, generator=draws, dtype=torch.float64)
    real = base.flip(-1) * 0.2 + torch.rand(shape, generator=draws, dtype=torch.float64) * 0.2
    estimate = bench.mmd_squared(generated, real)
    assert estimate.shape == ((replicas,) if replicas else ())
    for r in range(max(replicas, 1)):
        x, y = (generated[r], real[r]) if replicas else (generated, real)
        expected = pairwise_mmd(list(x), list(y), bench.BANDWIDTHS)
        assert math.isclose(float(estimate.reshape(-1)[r]), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_the_estimate_ranks_a_digit_drawn_too_often_above_the_datas_own_shares():
    """A batch that repeats one image is further from a varied batch than another varied batch is."""
    bench = load_bench_module("gan_mmd")
    varied = images(64, seed=1).double()
    other = images(64, seed=2).double()
    repeated = torch.cat([varied[:32], varied[:1].expand(32, -1, -1, -1)])
    assert bench.mmd_squared(repeated, other) > bench.mmd_squared(varied, other) + 1e-6


def test_gs_step_descends_the_written_objective_and_ds_step_is_mnistgens():
    bench = load_bench_module("gan_mmd")
    torch.manual_seed(0)
    generator, discriminator = gan_model.Generator().double(), gan_model.Discriminator().double()
    draws = torch.Generator().manual_seed(1)
    real = images(6).double()
    z = torch.rand(6, 64, generator=draws, dtype=torch.float64) * 2 - 1
    weight, rate = 3.0, 0.5

    def stepped(installed: bool):
        g, d = copy.deepcopy(generator), copy.deepcopy(discriminator)
        optimizers = torch.optim.SGD(g.parameters(), lr=rate), torch.optim.SGD(d.parameters(), lr=rate)
        if installed:
            with bench.installed(weight) as batches:
                gan_model.train_step(g, d, *optimizers, real, z)
            assert torch.equal(batches["real"], real) and batches["generated"].requires_grad
        else:
            gan_model.train_step(g, d, *optimizers, real, z)
        return g, d

    plain_g, plain_d = stepped(False)
    g, d = stepped(True)
    assert all(torch.equal(a, b) for a, b in zip(d.parameters(), plain_d.parameters(), strict=True))
    fake = generator(z)  # the objective as written, with D after its step
    objective = generator_loss(plain_d(fake)) + weight * bench.mmd_squared(fake, real)
    gradients = torch.autograd.grad(objective, list(generator.parameters()))
    for before, after, gradient in zip(generator.parameters(), g.parameters(), gradients, strict=True):
        assert torch.allclose(after, before - rate * gradient, rtol=1e-10, atol=1e-13)
    assert any(not torch.equal(a, b) for a, b in zip(g.parameters(), plain_g.parameters(), strict=True))


def test_weight_zero_is_mnistgens_run_to_the_bit_and_the_originals_come_back(tmp_path):
    bench = load_bench_module("gan_mmd")
    originals = gan_model.train_step, gan_model.generator_loss
    runs = {}
    for name, weight in (("plain", None), ("zero", 0.0), ("one", 1.0)):
        run = RunDir(tmp_path / name)
        if weight is None:
            gan_train.train_gan(dataclasses.replace(SMALL, epochs=1), images(), run, show_progress=False)
        else:
            with bench.installed(weight):
                gan_train.train_gan(dataclasses.replace(SMALL, epochs=1), images(), run, show_progress=False)
            assert (gan_model.train_step, gan_model.generator_loss) == originals
        runs[name] = checkpoint(run)
    for key in ("generator", "discriminator"):
        plain = runs["plain"][key]
        assert all(torch.equal(runs["zero"][key][name], value) for name, value in plain.items()), key
    assert any(not torch.equal(runs["one"]["generator"][name], value)
               for name, value in runs["plain"]["generator"].items())
