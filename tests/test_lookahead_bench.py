"""bench/gan_lookahead.py, the measurement of lookahead on both players through mnistgen's own loop: the slow
weights' step against the formula computed from plain runs, and that it changes nothing else of the training."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from bench_support import load_bench_module
from test_gan_options import SMALL, checkpoint, images, stop_after

from mnistgen.errors import TrainingInterrupted
from mnistgen.models import gan as gan_model
from mnistgen.runs import RunDir
from mnistgen.train import gan as gan_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLAYERS = ("generator", "discriminator")


def run(tmp_path, name: str, lookahead: tuple[int, float] | None = None, steps: int | None = None) -> dict:
    """SMALL's 3 epochs (3 steps each), or its first ``steps`` steps, with lookahead (k, alpha) or without;
    returns the checkpoint. mnistgen's own step is back afterwards."""
    bench = load_bench_module("gan_lookahead")
    original, folder = gan_model.train_step, RunDir(tmp_path / name)
    stop = {} if steps is None else {"stop": stop_after(steps)}
    with bench.installed(bench.Lookahead(*lookahead)) if lookahead else nullcontext():
        try:
            gan_train.train_gan(SMALL, images(), folder, show_progress=False, **stop)
        except TrainingInterrupted:
            assert steps is not None
    assert gan_model.train_step is original
    return checkpoint(folder)


def test_every_kth_step_puts_both_players_on_the_slow_weights_step_towards_them(tmp_path):
    start = run(tmp_path, "start", steps=0)  # the weights before the first step
    fast = run(tmp_path, "fast", steps=2)  # two of mnistgen's steps from them
    slowed = run(tmp_path, "slowed", (2, 0.25), steps=2)  # the lookahead's first sync, after step 2
    for player in PLAYERS:
        for name, weight in start[player].items():
            expected = weight + 0.25 * (fast[player][name] - weight)
            assert torch.allclose(slowed[player][name], expected, rtol=0, atol=1e-7), (player, name)
    moved = [name for name, weight in start["generator"].items() if not torch.equal(weight, fast["generator"][name])]
    assert moved  # the steps changed the weights, so the test compares a step


def test_alpha_one_is_mnistgens_own_training_to_the_bit_and_alpha_half_is_not(tmp_path):
    plain = run(tmp_path, "plain")
    same = run(tmp_path, "alpha-one", (2, 1.0))  # slow weights equal to the fast ones at every sync
    halved = run(tmp_path, "alpha-half", (2, 0.5))
    for key in (*PLAYERS, "generator_ema"):
        for name, value in plain[key].items():
            assert torch.equal(same[key][name], value), (key, name)
    for player in PLAYERS:
        assert any(not torch.equal(halved[player][name], value) for name, value in plain[player].items()), player
