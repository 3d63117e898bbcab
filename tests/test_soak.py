"""The soak's short form (bench/soak.py): a real `mnistgen vae train` process killed with SIGKILL at random
moments, resumed each time, ends with exactly the weights, optimizer state and metrics of an uninterrupted run.
The full form (6 epochs, 30 kills) is recorded in docs/RELIABILITY.md."""

from __future__ import annotations

import pytest
from bench_support import load_bench_module

pytestmark = pytest.mark.slow  # whole trainings, processes and pipelines: `pytest -m slow`


def test_a_run_killed_at_random_moments_ends_as_if_never_killed(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTGEN_DATA_DIR", str(mnist_dir))
    soak = load_bench_module("soak")
    result = soak.soak(tmp_path, epochs=2, kills=4, seed=1, say=lambda line: None)
    assert result["kills"] == 4 and result["attempts"] >= 5
    for verdict in result["verdicts"].values():
        assert verdict["same_weights"] and verdict["same_optimizer_state"] and verdict["same_metrics"]
        assert verdict["leftover_temporaries"] == []
