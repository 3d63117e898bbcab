"""``--mmd-weight``: G's objective gains the squared maximum mean discrepancy between its batch and the real one. The
estimate against an independent computation pair by pair, G's step against the written objective, exact resume, and
the engines (each replica in turn, stacked, the C kernels) taking it alike; the torchrun job's global batch is in
test_torchrun.py.

Small random image sets and one CPU thread keep every run here to a few seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math

import pytest
import torch
from conftest import native_kernels_build
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gan_options import SMALL, assert_stacked_replicas_follow_their_separate_runs, checkpoint, images, trained

from mnistgen.config import replica_config
from mnistgen.losses import MMD_BANDWIDTHS, generator_loss, mmd_squared
from mnistgen.models import gan as gan_models
from mnistgen.runs import RunDir
from mnistgen.train import gan as train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLAYERS = ("generator", "discriminator")
MATCHED = dataclasses.replace(SMALL, mmd_weight=10.0)  # 3 epochs of 3 steps of 32 images


# --------------------------------------------------------------------------- the arithmetic


def pairwise_mmd(x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
    """The estimate pair by pair, in Python floats."""
    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        squared = sum((float(p) - float(q)) ** 2 for p, q in zip(a.flatten(), b.flatten(), strict=True))
        return sum(math.exp(-squared / (2 * s)) for s in MMD_BANDWIDTHS)

    def within(a: list[torch.Tensor]) -> float:
        return sum(k(p, q) for p, q in itertools.permutations(a, 2)) / (len(a) * (len(a) - 1))

    return within(x) + within(y) - 2 * sum(k(p, q) for p in x for q in y) / (len(x) * len(y))


@settings(max_examples=25, deadline=None)
@given(replicas=st.integers(0, 2), batch=st.integers(2, 5), seed=st.integers(0, 2 ** 31))
def test_the_estimate_is_the_mean_over_distinct_pairs_within_less_twice_across(replicas, batch, seed):
    draws = torch.Generator().manual_seed(seed)
    shape = (replicas, batch, 1, 28, 28) if replicas else (batch, 1, 28, 28)
    # images a few pixels apart, so that every bandwidth's kernel is far from 0 and from 1
    base = torch.rand(shape, generator=draws, dtype=torch.float64)
    generated = base + 0.15 * torch.rand(shape, generator=draws, dtype=torch.float64)
    real = base.flip(-1) * 0.2 + torch.rand(shape, generator=draws, dtype=torch.float64) * 0.2
    estimate = mmd_squared(generated, real)
    assert estimate.shape == ((replicas,) if replicas else ())
    for r in range(max(replicas, 1)):
        x, y = (generated[r], real[r]) if replicas else (generated, real)
        expected = pairwise_mmd(list(x), list(y))
        assert math.isclose(float(estimate.reshape(-1)[r]), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_a_kind_of_image_drawn_too_often_is_further_from_the_data_than_the_datas_own_shares():
    varied, other = images(64, seed=1).double(), images(64, seed=2).double()
    repeated = torch.cat([varied[:32], varied[:1].expand(32, -1, -1, -1)])  # half the batch one image
    assert mmd_squared(repeated, other) > mmd_squared(varied, other) + 1e-6


def test_gs_step_descends_the_written_objective_ds_step_is_unchanged_and_gs_loss_is_reported_without_it():
    torch.manual_seed(0)
    generator, discriminator = gan_models.Generator().double(), gan_models.Discriminator().double()
    real = images(6).double()
    z = torch.rand(6, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    weight, rate = 3.0, 0.5

    def stepped(mmd_weight: float | None):
        g, d = copy.deepcopy(generator), copy.deepcopy(discriminator)
        optimizers = torch.optim.SGD(g.parameters(), lr=rate), torch.optim.SGD(d.parameters(), lr=rate)
        stats = gan_models.train_step(g, d, *optimizers, real, z, mmd_weight=mmd_weight)
        return g, d, stats

    plain_g, plain_d, plain_stats = stepped(None)
    g, d, stats = stepped(weight)
    assert all(torch.equal(a, b) for a, b in zip(d.parameters(), plain_d.parameters(), strict=True))
    assert torch.equal(stats, plain_stats)  # G's loss without the discrepancy, as D's without R1
    fake = generator(z)  # the objective as written, with D after its step
    objective = generator_loss(plain_d(fake)) + weight * mmd_squared(fake, real)
    gradients = torch.autograd.grad(objective, list(generator.parameters()))
    for before, after, gradient in zip(generator.parameters(), g.parameters(), gradients, strict=True):
        torch.testing.assert_close(after, before - rate * gradient, rtol=1e-10, atol=1e-13)
    assert any(not torch.equal(a, b) for a, b in zip(g.parameters(), plain_g.parameters(), strict=True))


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("cpu_kernels", ["reference", "auto"])
def test_the_term_changes_gs_training_keeps_the_accelerators_is_recorded_and_resumes_bit_for_bit(tmp_path,
                                                                                                 cpu_kernels):
    config = dataclasses.replace(MATCHED, cpu_kernels=cpu_kernels)
    plain = trained(tmp_path, "plain", dataclasses.replace(config, mmd_weight=None))
    whole = trained(tmp_path, "whole", config)
    assert any(not torch.equal(whole["generator"][name], value) for name, value in plain["generator"].items())
    trained(tmp_path, "resumed", config, steps=4)  # in epoch 2
    train.train_gan(config, images(), RunDir(tmp_path / "resumed"), resume=True, show_progress=False)
    resumed = checkpoint(RunDir(tmp_path / "resumed"))
    for key in (*PLAYERS, "generator_ema"):
        assert all(torch.equal(resumed[key][name], value) for name, value in whole[key].items()), key
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["config"]["mmd_weight"] == 10.0
    if cpu_kernels == "auto":  # the term is outside the networks: SPEC's keep their accelerators
        fastest = "native" if native_kernels_build() else "torch"
        assert RunDir(tmp_path / "whole").read_metrics()[-1]["trained_by"] == f"G {fastest}, D {fastest}"


def test_replicas_with_the_term_one_after_another_and_stacked_follow_their_separate_runs(tmp_path):
    """Each replica in turn (the accelerated calls) is its separate run to the bit; the stacked engine (vmap over the
    networks, the discrepancy of each replica's batches) is, in float64, to rounding."""
    config = dataclasses.replace(MATCHED, epochs=2, seeds="11,12")
    histories = train.train_gan(config, images(), RunDir(tmp_path / "in-turn"), show_progress=False)
    assert histories[11][-1]["trained_by"].startswith("2 replicas, one replica after another")
    for seed in (11, 12):
        mine = checkpoint(RunDir(tmp_path / "in-turn").seed_run(seed))
        theirs = trained(tmp_path, f"seed-{seed}", replica_config(config, seed))
        for key in PLAYERS:
            assert all(torch.equal(mine[key][name], value) for name, value in theirs[key].items()), key
    assert_stacked_replicas_follow_their_separate_runs(config, tmp_path / "stacked", (*PLAYERS, "generator_ema"))
