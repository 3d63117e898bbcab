"""Small pure functions that the product and the checks of SPEC §4 share (derivations: docs/theory.md): Gaussian
KLs (torch, batch-first); tabulated densities (NumPy, float64: values on a grid of spacing ``dx``, integrals as
``sum(values) * dx``, probability vectors with ``dx = 1``; 0 * log 0 = 0, p * log(p / 0) = +inf for p > 0); finite
latent spaces by enumeration; distances on the line."""

from __future__ import annotations

import math

import numpy as np
import torch


def kl_diag_gaussians(mu_q: torch.Tensor, logvar_q: torch.Tensor,
                      mu_p: torch.Tensor | float = 0.0, logvar_p: torch.Tensor | float = 0.0) -> torch.Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))), summed over the last dim: per dimension
    log(s_p/s_q) + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2. mu_q, logvar_q (B, D); mu_p, logvar_p broadcastable
    (default: the prior N(0, I)) -> (B,)."""
    mu_p = torch.as_tensor(mu_p, dtype=mu_q.dtype, device=mu_q.device)
    logvar_p = torch.as_tensor(logvar_p, dtype=mu_q.dtype, device=mu_q.device)
    per_dim = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return per_dim.sum(dim=-1)


def kl_estimator_noise_variance(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Variance of the one-sample Monte Carlo KL term of Eq. 2, log q(z|x) - log p(z) with z ~ q, p = N(0, I).

    With z_j = mu_j + s_j eps_j: log p(z) - log q(z|x) = sum_j [-mu_j^2/2 + log s_j - mu_j s_j eps_j
    - (s_j^2 - 1) eps_j^2 / 2]; eps_j and eps_j^2 are uncorrelated and Var eps^2 = 2, so the variance is
    sum_j [mu_j^2 s_j^2 + (s_j^2 - 1)^2 / 2]. It is the noise that Eq. 1's closed-form KL removes; it
    vanishes only when q = p(z). Shapes: (B, D) -> (B,)."""
    variance = logvar.exp()
    return (mu ** 2 * variance + 0.5 * (variance - 1.0) ** 2).sum(dim=-1)


def _nonnegative_pair(p, q) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"the two densities must be tabulated on the same points: shapes {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("densities and probabilities must be non-negative")
    return p, q


def _xlogy_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p * log(p / q) elementwise with 0 log(0/q) = 0 and p log(p/0) = +inf for p > 0."""
    terms = np.zeros_like(p)
    positive = p > 0
    with np.errstate(divide="ignore"):  # q == 0 where p > 0 gives log(inf) = inf on purpose
        terms[positive] = p[positive] * (np.log(p[positive]) - np.log(q[positive]))
    return terms


def kl_divergence(p, q, dx: float = 1.0) -> float:
    """KL(p || q) = sum p log(p / q) dx: +inf as soon as p > 0 somewhere q = 0."""
    p, q = _nonnegative_pair(p, q)
    return float(_xlogy_ratio(p, q).sum() * dx)


def js_divergence(p, q, dx: float = 1.0) -> float:
    """JSD(p, q) = KL(p || m)/2 + KL(q || m)/2 with m = (p + q)/2: symmetric, finite, at most log 2."""
    p, q = _nonnegative_pair(p, q)
    m = 0.5 * (p + q)
    return float(0.5 * (_xlogy_ratio(p, m).sum() + _xlogy_ratio(q, m).sum()) * dx)


def optimal_discriminator(p_data, p_model) -> np.ndarray:
    """D*(x) = p_data(x) / (p_data(x) + p_G(x)), pointwise; 1/2 where both are 0 (D does not enter V there)."""
    p_data, p_model = _nonnegative_pair(p_data, p_model)
    total = p_data + p_model
    d_star = np.full_like(total, 0.5)
    np.divide(p_data, total, out=d_star, where=total > 0)
    return d_star


def pointwise_discriminator_objective(d, a: float, b: float) -> np.ndarray:
    """a log D + b log(1 - D) for D in [0, 1] (a = p_data(x), b = p_G(x)): what D*(x) maximizes."""
    d = np.asarray(d, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log 0 is picked out by the where
        data_term = np.where(a > 0, a * np.log(d), 0.0)
        model_term = np.where(b > 0, b * np.log1p(-d), 0.0)
    return data_term + model_term


def gan_value(p_data, p_model, discriminator, dx: float = 1.0) -> float:
    """V(D, G) = E_{x~p_data}[log D(x)] + E_{x~p_G}[log(1 - D(x))] on a grid (-inf where D errs with certainty);
    ``discriminator``: D(x) in [0, 1] on the same points as the densities."""
    p_data, p_model = _nonnegative_pair(p_data, p_model)
    d = np.asarray(discriminator, dtype=np.float64)
    if d.shape != p_data.shape:
        raise ValueError(f"discriminator values have shape {d.shape}, the densities {p_data.shape}")
    terms = np.zeros_like(p_data)
    with np.errstate(divide="ignore"):
        data_side, model_side = p_data > 0, p_model > 0
        terms[data_side] += p_data[data_side] * np.log(d[data_side])
        terms[model_side] += p_model[model_side] * np.log1p(-d[model_side])
    return float(terms.sum() * dx)


def gan_value_at_optimal_discriminator(p_data, p_model, dx: float = 1.0) -> float:
    """max_D V(D, G) = V(D*, G) = 2 JSD(p_data, p_G) - log 4 (docs/theory.md), with log D* and log(1 - D*) as
    differences of logs: in far tails D* can round to 0 or 1 although both densities are positive."""
    p_data, p_model = _nonnegative_pair(p_data, p_model)
    total = p_data + p_model
    return float((_xlogy_ratio(p_data, total).sum() + _xlogy_ratio(p_model, total).sum()) * dx)


def log_evidence_by_enumeration(log_likelihood, log_prior) -> float:
    """log p(x) = log sum_z p(x|z) p(z), computed stably (log-sum-exp) from per-state log values."""
    log_joint = np.asarray(log_likelihood, dtype=np.float64) + np.asarray(log_prior, dtype=np.float64)
    top = log_joint.max()
    return float(top + np.log(np.exp(log_joint - top).sum()))


def posterior_by_enumeration(log_likelihood, log_prior) -> np.ndarray:
    """p(z|x) = p(x|z) p(z) / sum_z' p(x|z') p(z') for every latent state z (Bayes' rule by enumeration)."""
    log_joint = np.asarray(log_likelihood, dtype=np.float64) + np.asarray(log_prior, dtype=np.float64)
    return np.exp(log_joint - log_evidence_by_enumeration(log_likelihood, log_prior))


def discrete_elbo(q, log_likelihood, log_prior) -> float:
    """ELBO(q) = sum_z q(z) log p(x|z) - KL(q || p(z)) for a distribution q over finitely many states."""
    q = np.asarray(q, dtype=np.float64)
    log_likelihood = np.asarray(log_likelihood, dtype=np.float64)
    expected_log_likelihood = float(np.sum(np.where(q > 0, q * log_likelihood, 0.0)))
    return expected_log_likelihood - kl_divergence(q, np.exp(np.asarray(log_prior, dtype=np.float64)))


def uniform_density(x, low: float, high: float) -> np.ndarray:
    """Density of U[low, high] at x: 1/(high - low) inside the closed interval, 0 outside."""
    x = np.asarray(x, dtype=np.float64)
    return np.where((x >= low) & (x <= high), 1.0 / (high - low), 0.0)


def uniform_cdf(x, low: float, high: float) -> np.ndarray:
    return np.clip((np.asarray(x, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


def kl_uniform(low_p: float, high_p: float, low_q: float, high_q: float) -> float:
    """KL(U[low_p, high_p] || U[low_q, high_q]) = log(len_q / len_p) if [low_p, high_p] lies in
    [low_q, high_q], else +inf (p puts mass where q has none)."""
    if low_q <= low_p and high_p <= high_q:
        return math.log((high_q - low_q) / (high_p - low_p))
    return math.inf


def wasserstein1_samples(u, v) -> float:
    """W1 between the empirical distributions of two 1-D samples (sizes may differ): integral_0^1 |F_P^-1(t) -
    F_Q^-1(t)| dt, an exact finite sum as both quantile functions are constant between the levels k/n and k/m."""
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    v = np.sort(np.asarray(v, dtype=np.float64).ravel())
    if u.size == 0 or v.size == 0:
        raise ValueError("W1 needs two non-empty samples")
    levels = np.union1d(np.arange(1, u.size + 1) / u.size, np.arange(1, v.size + 1) / v.size)  # (K,) in (0, 1]
    lower = np.concatenate(([0.0], levels[:-1]))
    middle = 0.5 * (lower + levels)  # inside each interval, away from the steps
    quantile_u = u[np.minimum((middle * u.size).astype(np.int64), u.size - 1)]
    quantile_v = v[np.minimum((middle * v.size).astype(np.int64), v.size - 1)]
    return float(np.sum((levels - lower) * np.abs(quantile_u - quantile_v)))


def wasserstein1_from_cdfs(grid, cdf_p, cdf_q) -> float:
    """W1 = integral |F_P(x) - F_Q(x)| dx, by the trapezoid rule on ``grid`` (increasing; it must cover
    both supports, where the two CDFs are 0 on the left and 1 on the right)."""
    grid = np.asarray(grid, dtype=np.float64)
    gap = np.abs(np.asarray(cdf_p, dtype=np.float64) - np.asarray(cdf_q, dtype=np.float64))
    if grid.ndim != 1 or gap.shape != grid.shape:
        raise ValueError("grid and CDF values must be 1-D arrays of the same length")
    if np.any(np.diff(grid) <= 0):
        raise ValueError("the grid must be strictly increasing")
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(grid)))
