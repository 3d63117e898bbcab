"""The four distribution functions of SPEC §2, as pure functions of tensors.

Batch-first: a log-density sums over every dimension but the first, one value per row (B,). Samplers take an optional
``torch.Generator`` so that a run's draws are reproducible and resumable. Each density in SPEC's form has a
numerically stable twin that the ELBO uses: ``log_normal_logvar`` (from the encoder's log-variance) and
``log_bernoulli_logits`` (from the decoder's logits), which stay finite where the plain forms reach log 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def _sum_events(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): sum over all dimensions but the batch dimension."""
    return values.reshape(values.shape[0], -1).sum(dim=1)


def log_normal(z: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, diag(variance)), per dimension -1/2 [log 2 pi + log variance + (z - mean)^2 / variance].
    Shapes: z, mean, variance (B, D) (broadcastable) -> (B,)."""
    z, mean, variance = torch.broadcast_tensors(z, mean, variance)
    return _sum_events(-0.5 * (LOG_2PI + variance.log() + (z - mean).square() / variance))


def log_normal_logvar(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, diag(exp(logvar))), from the log-variance (stable). Shapes (B, D) -> (B,). The distance as
    ((z - mean) exp(-logvar / 2))^2 holds in float32 to logvar -176; exp(-logvar) alone overflows below -88."""
    z, mean, logvar = torch.broadcast_tensors(z, mean, logvar)
    return _sum_events(-0.5 * (LOG_2PI + logvar + ((z - mean) * torch.exp(-0.5 * logvar)).square()))


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, I), the prior p(z). Shape (B, D) -> (B,)."""
    return _sum_events(-0.5 * (LOG_2PI + z.square()))


def log_bernoulli(x: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """log prod_d p_d^x_d (1 - p_d)^(1 - x_d). Shapes: x, probabilities (B, ...) -> (B,). By xlogy, x = 0 at p = 0
    (or x = 1 at p = 1) adds exactly 0, not 0 * log 0 = NaN; x = 1 at p = 0 gives -inf, the true value."""
    return _sum_events(torch.xlogy(x, probabilities) + torch.xlogy(1.0 - x, 1.0 - probabilities))


def log_bernoulli_logits(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x | sigmoid(logits)) = x l - softplus(l) (from x log sigmoid(l) + (1 - x) log sigmoid(-l)),
    finite for every finite logit l. Shapes (B, ...) -> (B,)."""
    return _sum_events(x * logits - F.softplus(logits))


def sample_normal(mean: torch.Tensor, variance: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(mean, diag(variance)) by reparametrization: z = mean + sqrt(variance) * eps, eps ~ N(0, I);
    differentiable in ``mean`` and ``variance``. Shapes: mean, variance (B, D) -> z (B, D)."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + variance.sqrt() * eps


def sample_normal_logvar(mean: torch.Tensor, logvar: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): :func:`sample_normal` from the log-variance, with the same
    draws (the same generator state gives both the same z). Shapes: (B, D) -> (B, D)."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


def sample_bernoulli(probabilities: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x ~ Bernoulli(probabilities), elementwise: 1.0 with probability p, else 0.0. Same shape, float."""
    return torch.bernoulli(probabilities, generator=generator)


def sample_uniform_noise(count: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(count, dim) draws of U[-1, 1] (the GAN's z, SPEC §3) on the generator's device."""
    return torch.rand((count, dim), generator=generator, device=generator.device).mul_(2.0).sub_(1.0)
