"""bench/gan_cluster_mmd.py, the measurement of a cluster kernel's MMD term in G's objective through mnistgen's own
loop: the estimate against an independent computation, k-means on separated groups, and that the term reaches G's
step and leaves mnistgen's own function in place after it."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from bench_support import load_bench_module
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gan_options import SMALL, trained

from mnistgen.losses import mmd_squared
from mnistgen.models import gan as gan_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pairwise_cluster_mmd(batch: list[torch.Tensor], centroids: torch.Tensor, data_mean: list[float],
                         temperature: float) -> float:
    """The estimate pair by pair in Python floats: soft assignments by their definition, k(x, y) = a(x) . a(y)."""
    def a(x: torch.Tensor) -> list[float]:
        weights = [math.exp(-sum((float(p) - float(q)) ** 2 for p, q in zip(x.flatten(), c, strict=True))
                            / temperature) for c in centroids]
        return [w / sum(weights) for w in weights]

    def dot(u: list[float], v: list[float]) -> float:
        return sum(p * q for p, q in zip(u, v, strict=True))

    soft = [a(x) for x in batch]
    within = sum(dot(u, v) for u, v in itertools.permutations(soft, 2)) / (len(soft) * (len(soft) - 1))
    return within - 2 * sum(dot(u, data_mean) for u in soft) / len(soft) + dot(data_mean, data_mean)


@settings(max_examples=20, deadline=None)
@given(replicas=st.integers(0, 2), batch=st.integers(2, 4), clusters=st.integers(1, 4),
       seed=st.integers(0, 2 ** 31))
def test_the_estimate_is_the_mean_over_distinct_pairs_less_twice_the_datas_mean_plus_its_square(
        replicas, batch, clusters, seed):
    bench = load_bench_module("gan_cluster_mmd")
    draws = torch.Generator().manual_seed(seed)
    shape = (replicas, batch, 1, 28, 28) if replicas else (batch, 1, 28, 28)
    generated = torch.rand(shape, generator=draws, dtype=torch.float64)
    centroids = torch.rand((clusters, 784), generator=draws, dtype=torch.float64)
    data_mean = torch.softmax(torch.randn(clusters, generator=draws, dtype=torch.float64), 0)
    temperature = 20.0  # images ~130 apart in squared distance, ~7 between centroids: assignments far from 0 and 1
    estimate = bench.cluster_mmd_squared(generated, centroids, data_mean, temperature)
    assert estimate.shape == ((replicas,) if replicas else ())
    for r in range(max(replicas, 1)):
        x = generated[r] if replicas else generated
        expected = pairwise_cluster_mmd(list(x), centroids, data_mean.tolist(), temperature)
        assert math.isclose(float(estimate.reshape(-1)[r]), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_kmeans_finds_separated_groups_and_the_term_sees_their_shares():
    bench = load_bench_module("gan_cluster_mmd")
    draws = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 784) * 10  # three groups, 10 apart along their own pixel
    groups = torch.arange(300) % 3
    images = centres[groups] + 0.1 * torch.randn(300, 784, generator=draws)  # (300, 784)
    centroids = bench.kmeans(images, 3)
    means = torch.stack([images[groups == g].mean(0) for g in range(3)])
    assert sorted(torch.cdist(means, centroids).argmin(1).tolist()) == [0, 1, 2]  # one centroid each
    assert torch.allclose(torch.cdist(means, centroids).min(1).values, torch.zeros(3), atol=1e-4)
    shares = bench.nearest_shares(bench.nearest_centroid(images[groups == 0], centroids), 3)
    assert sorted(shares.tolist()) == [0.0, 0.0, 1.0]  # one group: all nearest one centroid
    data_mean = bench.assignments(images, centroids, 1.0).mean(0)
    assert torch.allclose(data_mean, torch.full((3,), 1 / 3), atol=1e-6)  # hard assignments, equal groups
    even = images[:60].view(60, 1, 28, 28)  # 20 of each group
    one_group = images[groups == 0][:60].view(60, 1, 28, 28)
    # hard assignments: the distinct pairs within a group over all distinct pairs, less 2/3, plus 1/3
    even_estimate = (3 * 20 * 19) / (60 * 59) - 1 / 3  # -0.0113: a batch without repeats is a little nearer
    assert float(bench.cluster_mmd_squared(even, centroids, data_mean, 1.0)) == pytest.approx(even_estimate,
                                                                                          rel=1e-4)
    assert float(bench.cluster_mmd_squared(one_group, centroids, data_mean, 1.0)) == pytest.approx(2 / 3, rel=1e-5)


def test_the_term_reaches_gs_step_and_mnistgens_own_function_is_back_after_it(tmp_path):
    bench = load_bench_module("gan_cluster_mmd")
    config = dataclasses.replace(SMALL, epochs=1, mmd_weight=10.0)
    centroids = torch.rand((5, 784), generator=torch.Generator().manual_seed(1))
    data_mean = torch.full((5,), 0.2)
    plain = trained(tmp_path, "plain", config)
    with bench.installed(3.0, centroids, data_mean, 100.0):
        with_term = trained(tmp_path, "with-term", config)
    assert gan_model.mmd_squared is mmd_squared
    again = trained(tmp_path, "again", config)
    assert all(torch.equal(again["generator"][name], value) for name, value in plain["generator"].items())
    assert any(not torch.equal(with_term["generator"][name], value) for name, value in plain["generator"].items())
    # D's first step precedes any G step with the term: the same to the bit; G's first step is not
    plain_step = trained(tmp_path, "plain-step", config, steps=1)
    with bench.installed(3.0, centroids, data_mean, 100.0):
        term_step = trained(tmp_path, "term-step", config, steps=1)
    for name, value in plain_step["discriminator"].items():
        assert torch.equal(term_step["discriminator"][name], value), name
    assert any(not torch.equal(term_step["generator"][name], value) for name, value in plain_step["generator"].items())
