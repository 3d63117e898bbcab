"""``--lookahead-steps`` and ``--lookahead-alpha``: lookahead on both players of the GAN. Its arithmetic against the
formula on small tensors, its schedule, the run's weights against plain runs of mnistgen's step, exact resume, and
the engines (each replica in turn, stacked, the C kernels) taking it alike.

Small random image sets and one CPU thread keep every run here to a few seconds.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import native_kernels_build
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gan_options import SMALL, assert_stacked_replicas_follow_their_separate_runs, checkpoint, images, trained

from mnistgen.config import replica_config
from mnistgen.models import gan as gan_models
from mnistgen.runs import RunDir
from mnistgen.train import gan as train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLAYERS = ("generator", "discriminator")
SLOW = {"generator": "generator_slow", "discriminator": "discriminator_slow"}  # a player's slow weights' key
AHEAD = dataclasses.replace(SMALL, lookahead_steps=2, lookahead_alpha=0.25)  # 3 epochs of 3 steps: syncs at 2, 4, ...


# --------------------------------------------------------------------------- the arithmetic


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(min_value=1e-3, max_value=1.0), sync=st.sampled_from([0.0, 1.0]),
       seed=st.integers(0, 2**16), channels_last=st.booleans())
def test_a_sync_steps_slow_alpha_of_the_way_and_puts_fast_on_it_and_no_sync_changes_nothing(alpha, sync, seed,
                                                                                          channels_last):
    draws = torch.Generator().manual_seed(seed)
    slow = [torch.randn(3, 4, generator=draws), torch.randn(2, 8, 3, 3, generator=draws)]
    fast = [torch.randn(3, 4, generator=draws), torch.randn(2, 8, 3, 3, generator=draws)]
    if channels_last:  # as G's convolutions are kept on the CPU by the "torch" accelerator
        slow[1], fast[1] = (t.contiguous(memory_format=torch.channels_last) for t in (slow[1], fast[1]))
    before_slow, before_fast = [t.clone() for t in slow], [t.clone() for t in fast]
    gan_models.sync_lookahead(slow, fast, alpha, torch.tensor(sync))
    for s, f, s0, f0 in zip(slow, fast, before_slow, before_fast, strict=True):
        if sync:
            expected = s0.double() + alpha * (f0.double() - s0.double())
            torch.testing.assert_close(s.double(), expected, rtol=0, atol=1e-6)
            assert torch.equal(f, s)  # the weights are put on the slow weights exactly
        else:
            assert torch.equal(s, s0) and torch.equal(f, f0)


def test_one_sync_per_stacked_replica_syncs_the_replicas_where_it_is_1_only():
    draws = torch.Generator().manual_seed(1)
    slow = [torch.randn(2, 3, 4, generator=draws, dtype=torch.float64), torch.randn(2, 5, generator=draws,
                                                                                   dtype=torch.float64)]
    fast = [torch.randn_like(t) for t in slow]
    before_slow, before_fast = [t.clone() for t in slow], [t.clone() for t in fast]
    gan_models.sync_lookahead(slow, fast, 0.5, torch.tensor([1.0, 0.0], dtype=torch.float64))  # (R,)
    for s, f, s0, f0 in zip(slow, fast, before_slow, before_fast, strict=True):
        torch.testing.assert_close(s[0], (s0[0] + f0[0]) / 2, rtol=1e-15, atol=1e-15)
        assert torch.equal(f[0], s[0])
        assert torch.equal(s[1], s0[1]) and torch.equal(f[1], f0[1])


def test_the_sync_comes_on_every_kth_step_counted_from_the_runs_first():
    like = torch.zeros((), dtype=torch.float64)
    syncs = gan_models.lookahead_syncs(dataclasses.replace(SMALL, lookahead_steps=3), 7, like)  # the run's steps 7, ...
    assert [float(s) for step in range(6) for s in syncs(step)] == [0, 1, 0, 0, 1, 0]  # its 9th and 12th steps
    assert syncs(0)[0].dtype == torch.float64 and syncs(0)[0].dim() == 0
    assert gan_models.lookahead_syncs(SMALL, 7, like)(0) == ()  # without lookahead: no input


# --------------------------------------------------------------------------- runs


def test_the_kth_step_puts_both_players_on_their_start_stepped_alpha_of_the_way_to_plain_training(tmp_path):
    plain = dataclasses.replace(AHEAD, lookahead_steps=None)
    start = trained(tmp_path, "start", plain, steps=0)  # the weights before the first step
    fast = trained(tmp_path, "fast", plain, steps=2)  # two of mnistgen's steps from them
    slowed = trained(tmp_path, "slowed", AHEAD, steps=2)  # the first sync, after step 2
    for player in PLAYERS:
        for name, weight in start[player].items():
            expected = weight + 0.25 * (fast[player][name] - weight)
            torch.testing.assert_close(slowed[player][name], expected, rtol=0, atol=1e-7, msg=f"{player}.{name}")
            assert torch.equal(slowed[SLOW[player]][name], slowed[player][name])
    before = trained(tmp_path, "before", AHEAD, steps=1)  # between two syncs: the slow weights are still the start
    for player in PLAYERS:
        assert all(torch.equal(before[SLOW[player]][name], weight) for name, weight in start[player].items())
    moved = [name for name, weight in start["generator"].items() if not torch.equal(weight, fast["generator"][name])]
    assert moved  # the steps changed the weights, so the test compares a step


@pytest.mark.parametrize("cpu_kernels", ["reference", "auto"])
def test_alpha_one_is_plain_training_to_the_bit_and_alpha_a_quarter_is_not(tmp_path, cpu_kernels):
    config = dataclasses.replace(AHEAD, cpu_kernels=cpu_kernels)
    plain = trained(tmp_path, "plain", dataclasses.replace(config, lookahead_steps=None))
    same = trained(tmp_path, "alpha-one", dataclasses.replace(config, lookahead_alpha=1.0))  # slow = fast at each sync
    slowed = trained(tmp_path, "alpha-quarter", config)
    for key in (*PLAYERS, "generator_ema"):
        for name, value in plain[key].items():
            assert torch.equal(same[key][name], value), (key, name)
    for player in PLAYERS:
        assert any(not torch.equal(slowed[player][name], value) for name, value in plain[player].items()), player
    if cpu_kernels == "auto":  # lookahead is outside the networks: SPEC's keep their accelerators
        fastest = "native" if native_kernels_build() else "torch"
        assert RunDir(tmp_path / "alpha-quarter").read_metrics()[-1]["trained_by"] == f"G {fastest}, D {fastest}"


@pytest.mark.parametrize("cpu_kernels", ["reference", "auto"])
def test_lookahead_is_recorded_and_a_run_stopped_between_two_syncs_resumes_bit_for_bit(tmp_path, cpu_kernels):
    config = dataclasses.replace(AHEAD, cpu_kernels=cpu_kernels)
    whole = trained(tmp_path, "whole", config)
    stopped = trained(tmp_path, "resumed", config, steps=5)  # in epoch 2, one step after the sync of step 4
    # what the checkpoint must carry: slow weights that are not the weights (a resume that started them afresh from
    # the weights restored would differ)
    assert not torch.equal(stopped["generator_slow"]["linear.weight"], stopped["generator"]["linear.weight"])
    train.train_gan(config, images(), RunDir(tmp_path / "resumed"), resume=True, show_progress=False)
    resumed = checkpoint(RunDir(tmp_path / "resumed"))
    for key in (*PLAYERS, *SLOW.values(), "generator_ema"):
        assert all(torch.equal(resumed[key][name], value) for name, value in whole[key].items()), key
    saved = json.loads((tmp_path / "whole" / "config.json").read_text())["config"]
    assert (saved["lookahead_steps"], saved["lookahead_alpha"]) == (2, 0.25)


def test_replicas_with_lookahead_one_after_another_and_stacked_follow_their_separate_runs(tmp_path):
    """Each replica in turn (the accelerated calls) is its separate run to the bit; the stacked engine (vmap over the
    reference step, one sync input per replica) is, in float64, to rounding."""
    config = dataclasses.replace(AHEAD, epochs=2, seeds="11,12")
    histories = train.train_gan(config, images(), RunDir(tmp_path / "in-turn"), show_progress=False)
    assert histories[11][-1]["trained_by"].startswith("2 replicas, one replica after another")
    for seed in (11, 12):
        mine = checkpoint(RunDir(tmp_path / "in-turn").seed_run(seed))
        theirs = trained(tmp_path, f"seed-{seed}", replica_config(config, seed))
        for key in (*PLAYERS, *SLOW.values()):
            assert all(torch.equal(mine[key][name], value) for name, value in theirs[key].items()), key
    assert_stacked_replicas_follow_their_separate_runs(config, tmp_path / "stacked",
                                                        (*PLAYERS, *SLOW.values(), "generator_ema"))
