"""The four distribution functions of SPEC §2 (and their stable twins): each against torch.distributions
and against a value computed by hand; shapes; behaviour at the extremes."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mnistgen.distributions import (
    log_bernoulli,
    log_bernoulli_logits,
    log_normal,
    log_normal_logvar,
    log_standard_normal,
    sample_bernoulli,
    sample_normal,
    sample_normal_logvar,
)

LOG_2PI = 1.8378770664093453  # log(2 pi), typed in


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- log N(z | mu, sigma^2 I)


def test_log_normal_matches_torch_distributions():
    g = generator(1)
    z, mean = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    variance = torch.rand(7, 3, generator=g, dtype=torch.float64) * 3 + 0.05
    expected = torch.distributions.Normal(mean, variance.sqrt()).log_prob(z).sum(dim=1)
    torch.testing.assert_close(log_normal(z, mean, variance), expected)
    torch.testing.assert_close(log_normal_logvar(z, mean, variance.log()), expected)
    assert log_normal(z, mean, variance).shape == (7,)


def test_log_normal_by_hand():
    # z = (1, 2), mean 0, variances (1, 4): -1/2 [log 2pi + 0 + 1] - 1/2 [log 2pi + log 4 + 4/4]
    z, mean, variance = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 4.0]])
    by_hand = -LOG_2PI - 0.5 * math.log(4.0) - 1.0  # -3.5310242470
    assert log_normal(z, mean, variance).item() == pytest.approx(by_hand, abs=1e-6)
    assert log_normal_logvar(z, mean, variance.log()).item() == pytest.approx(by_hand, abs=1e-6)


def test_log_standard_normal_matches_torch_and_hand():
    z = torch.randn(5, 2, generator=generator(2), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=1)
    torch.testing.assert_close(log_standard_normal(z), expected)
    assert log_standard_normal(torch.zeros(1, 2)).item() == pytest.approx(-LOG_2PI, abs=1e-6)  # 2 * (-log 2pi / 2)
    assert log_standard_normal(torch.tensor([[3.0, 0.0]])).item() == pytest.approx(-LOG_2PI - 4.5, abs=1e-6)


def test_log_normal_logvar_is_finite_where_the_variance_underflows():
    # exp(-120) is 0 in float32: the variance form gives -inf/NaN, the log-variance form stays exact
    z, mean, logvar = torch.zeros(1, 2), torch.zeros(1, 2), torch.full((1, 2), -120.0)
    value = log_normal_logvar(z, mean, logvar)
    assert torch.isfinite(value).all()
    assert value.item() == pytest.approx(-LOG_2PI + 120.0, rel=1e-6)  # 2 * -1/2 (log 2pi - 120)


# --------------------------------------------------------------------------- log Bernoulli(x | p)


def test_log_bernoulli_matches_torch_distributions():
    g = generator(3)
    probabilities = torch.rand(6, 28, 28, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x = torch.bernoulli(torch.full((6, 28, 28), 0.3, dtype=torch.float64), generator=g)
    expected = torch.distributions.Bernoulli(probs=probabilities).log_prob(x).sum(dim=(1, 2))
    torch.testing.assert_close(log_bernoulli(x, probabilities), expected)
    logits = torch.logit(probabilities)
    torch.testing.assert_close(log_bernoulli_logits(x, logits), expected)
    assert log_bernoulli(x, probabilities).shape == (6,)


def test_log_bernoulli_by_hand():
    x = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.tensor([[0.5, 0.25, 0.9]])
    by_hand = math.log(0.5) + math.log(0.75) + math.log(0.9)  # -1.0861897...
    assert log_bernoulli(x, p).item() == pytest.approx(by_hand, abs=1e-6)
    # logits 0 and log 3 are probabilities 1/2 and 3/4
    assert log_bernoulli_logits(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, math.log(3.0)]])).item() == \
        pytest.approx(math.log(0.5) + math.log(0.75), abs=1e-6)


def test_log_bernoulli_at_certain_pixels():
    # p = 0 for x = 0 and p = 1 for x = 1 are certain events: log 1 = 0, not 0 * log 0 = NaN
    assert log_bernoulli(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]])).item() == 0.0
    assert log_bernoulli(torch.tensor([[1.0]]), torch.tensor([[0.0]])).item() == -math.inf


def test_log_bernoulli_logits_is_finite_for_extreme_logits():
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    logits = torch.tensor([[1e4, -1e4, -1e4, 1e4]])
    # matching pixels cost ~0, the two mismatched ones cost |logit| each
    assert log_bernoulli_logits(x, logits).item() == pytest.approx(-2e4, rel=1e-6)
    black, white = torch.zeros(2, 784), torch.ones(2, 784)
    for images in (black, white):
        for value in (-1e30, 1e30, 0.0):
            assert torch.isfinite(log_bernoulli_logits(images, torch.full((2, 784), value))).all()


# --------------------------------------------------------------------------- z ~ N(mu, sigma^2 I), reparametrized


def test_sample_normal_is_the_reparametrization():
    mean = torch.tensor([[1.0, -2.0]], requires_grad=True)
    variance = torch.tensor([[4.0, 0.25]], requires_grad=True)
    eps = torch.randn(1, 2, generator=generator(4))
    z = sample_normal(mean, variance, generator(4))
    torch.testing.assert_close(z, mean + variance.sqrt() * eps)
    z.sum().backward()  # dz/dmean = 1, dz/dvariance = eps / (2 sqrt(variance))
    torch.testing.assert_close(mean.grad, torch.ones(1, 2))
    torch.testing.assert_close(variance.grad, eps / (2 * variance.detach().sqrt()))
    # the log-variance form draws the same eps, hence the same z
    torch.testing.assert_close(sample_normal_logvar(mean, variance.log(), generator(4)), z)


def test_sample_normal_has_the_distribution_of_torch_distributions():
    n = 20000
    mean, std = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.3])
    z = sample_normal(mean.expand(n, 2), (std ** 2).expand(n, 2), generator(5))
    for d in range(2):  # Kolmogorov-Smirnov against the CDF of torch.distributions.Normal
        cdf = torch.distributions.Normal(mean[d].double(), std[d].double()).cdf
        result = stats.kstest(z[:, d].double().numpy(), lambda v, cdf=cdf: cdf(torch.as_tensor(v)).numpy())
        assert result.pvalue > 1e-3
    assert torch.allclose(z.mean(0), mean, atol=5 * float(std.max()) / math.sqrt(n))


# --------------------------------------------------------------------------- x ~ Bernoulli(p)


def test_sample_bernoulli_frequencies_and_certain_pixels():
    n = 40000
    p = torch.tensor([0.0, 0.1, 0.5, 0.93, 1.0])
    x = sample_bernoulli(p.expand(n, 5), generator(6))
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    reference = torch.distributions.Bernoulli(probs=p)
    standard_error = (reference.variance / n).sqrt()
    assert (x.mean(0) - reference.mean).abs().le(5 * standard_error + 1e-12).all()
    assert x[:, 0].sum() == 0 and x[:, 4].sum() == n
