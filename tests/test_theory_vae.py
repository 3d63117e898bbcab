"""SPEC §4, VAE half: each statement checked against an independent computation.

Independent means: scipy quadrature, scipy.stats, torch.distributions, exhaustive enumeration, or a
Monte Carlo average whose tolerance is a multiple of its own standard error. The derivations are in
docs/theory.md, whose sections name these tests.

The "linear-Gaussian model" used here is the VAE with everything computable: z ~ N(0, 1),
x | z ~ N(a z + b, s^2). Its evidence, posterior and ELBO are integrals in one variable, so scipy.quad
gives them to ~1e-10 without using any formula of the product.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from mnistgen import distributions, theory
from mnistgen.models.vae import VAE

A, B, S = 2.0, 0.5, 1.0  # the linear-Gaussian model x | z ~ N(A z + B, S^2), z ~ N(0, 1)
QUAD = {"epsabs": 1e-12, "epsrel": 1e-12, "limit": 200}


LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_normal_pdf(value, mean, sd):
    """log N(value | mean, sd^2) written out (scalar or NumPy); scipy.stats is too slow inside quad."""
    return -LOG_SQRT_2PI - np.log(sd) - (value - mean) ** 2 / (2 * sd * sd)


def log_likelihood(x: float, z):
    return log_normal_pdf(x, A * z + B, S)


def log_joint(x: float, z):
    return log_likelihood(x, z) + log_normal_pdf(z, 0.0, 1.0)


def quad_expectation(f, mean: float, sd: float) -> float:
    """E_{z ~ N(mean, sd^2)}[f(z)] by adaptive quadrature over mean +- 14 sd (the rest weighs < 1e-40)."""
    return integrate.quad(lambda z: math.exp(log_normal_pdf(z, mean, sd)) * f(z), mean - 14 * sd, mean + 14 * sd,
                          **QUAD)[0]


def log_evidence_by_quadrature(x: float) -> float:
    return math.log(integrate.quad(lambda z: math.exp(log_joint(x, z)), -14, 14, **QUAD)[0])


def posterior(x: float) -> tuple[float, float]:
    """Closed-form posterior of the linear-Gaussian model (Gaussian conjugacy): mean, sd."""
    precision = 1.0 + A * A / (S * S)
    return A * (x - B) / (S * S) / precision, 1.0 / math.sqrt(precision)


def kl_1d(m1, s1, m2, s2) -> float:
    """The product's KL for two 1-D Gaussians (through kl_diag_gaussians)."""
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731 - (1, 1) tensors
    return float(theory.kl_diag_gaussians(t(m1), t(2 * math.log(s1)), t(m2), t(2 * math.log(s2))))


# --------------------------------------------------------------------------- Bernoulli likelihood


def test_bernoulli_product_formula_matches_torch_distributions():
    """p(x|z) = prod_j yhat_j^x_j (1 - yhat_j)^(1 - x_j): the product itself (float64, 12 pixels, so it does
    not underflow) equals torch.distributions.Bernoulli, and summed over all 2^12 images it is 1."""
    generator = torch.Generator().manual_seed(0)
    yhat = torch.rand(12, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    images = torch.tensor([[(k >> j) & 1 for j in range(12)] for k in range(2 ** 12)], dtype=torch.float64)
    product = torch.prod(yhat ** images * (1 - yhat) ** (1 - images), dim=1)  # (4096,)
    reference = torch.distributions.Bernoulli(probs=yhat).log_prob(images).sum(dim=1).exp()
    torch.testing.assert_close(product, reference, rtol=1e-12, atol=0)
    assert product.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_bernoulli_log_likelihood_of_the_product_matches_torch_distributions():
    """The product's log Bernoulli on 784-pixel images, from probabilities and from logits, equals
    torch.distributions' and the literal log of the product formula (summed in float64)."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 784, generator=generator, dtype=torch.float64) * 4
    x = torch.bernoulli(torch.full((5, 784), 0.3, dtype=torch.float64), generator=generator)
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(dim=1)
    yhat = torch.sigmoid(logits)
    by_hand = torch.log(yhat ** x * (1 - yhat) ** (1 - x)).sum(dim=1)
    torch.testing.assert_close(distributions.log_bernoulli_logits(x, logits), reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(distributions.log_bernoulli(x, yhat), reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(by_hand, reference, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- encoder output size


def _jacobian_rank(log_density, parameters: torch.Tensor, points: torch.Tensor) -> int:
    """Rank of d log q(z_k; params) / d params over many points z_k: the number of independent
    directions in which the outputs of an encoder actually change q."""
    jac = torch.autograd.functional.jacobian(lambda p: log_density(points, p), parameters)  # (K, P)
    return int(torch.linalg.matrix_rank(jac))


def test_a_diagonal_gaussian_in_two_dimensions_needs_four_numbers_and_identity_covariance_two():
    """With D_z = 2 a diagonal Gaussian q has 2 means + 2 variances, none redundant (rank 4), while
    N(mu, I) is fixed by the 2 means (rank 2) -- checked on torch.distributions' log density."""
    points = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def diagonal(z, p):  # p = (mu_1, mu_2, logvar_1, logvar_2)
        return torch.distributions.Normal(p[:2], (0.5 * p[2:]).exp()).log_prob(z).sum(-1)

    def identity(z, p):  # p = (mu_1, mu_2)
        return torch.distributions.Normal(p, torch.ones(2, dtype=torch.float64)).log_prob(z).sum(-1)

    assert _jacobian_rank(diagonal, torch.tensor([0.3, -0.2, 0.1, -0.4], dtype=torch.float64), points) == 4
    assert _jacobian_rank(identity, torch.tensor([0.3, -0.2], dtype=torch.float64), points) == 2


def test_the_vae_encoder_outputs_two_means_and_two_log_variances():
    """The real encoder of SPEC §2 (D_z = 2) maps a batch (B, 784) to mu (B, 2) and log sigma^2 (B, 2)
    through two heads Linear(500, 2), and those 4 outputs move q(z|x) independently: the Jacobian of
    log q(z_k|x) at 50 points z_k with respect to the 4 outputs has rank 4."""
    torch.manual_seed(0)
    encoder = VAE().encoder.double()
    x = torch.rand(7, 784, dtype=torch.float64)
    mu, logvar = encoder(x)
    assert mu.shape == (7, 2) and logvar.shape == (7, 2)
    heads = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear) and m.in_features == 500]
    assert [(h.in_features, h.out_features) for h in heads] == [(500, 2), (500, 2)]
    points = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def log_q(z, outputs):  # outputs = (mu_1, mu_2, logvar_1, logvar_2) of the first image
        return distributions.log_normal_logvar(z, outputs[:2], outputs[2:])

    outputs = torch.cat([mu[0], logvar[0]]).detach()
    assert _jacobian_rank(log_q, outputs, points) == 4


# --------------------------------------------------------------------------- ELBO and its gap


@pytest.mark.parametrize("x", [-1.3, 0.4, 2.9])
@pytest.mark.parametrize("q_mean, q_sd", [(0.0, 1.0), (0.7, 0.3), (-1.0, 2.0)])
def test_elbo_is_below_log_evidence_and_the_gap_is_the_posterior_kl(x, q_mean, q_sd):
    """log p(x) - ELBO(q) = KL(q || p(z|x)) >= 0, every term by quadrature on the linear-Gaussian model
    (p(z|x) = p(x, z) / p(x) numerically, no conjugacy used); and ELBO = E_q log p(x|z) - KL(q || p(z))
    with the product's closed-form KL."""
    log_px = log_evidence_by_quadrature(x)
    log_q = lambda z: log_normal_pdf(z, q_mean, q_sd)  # noqa: E731
    elbo = quad_expectation(lambda z: log_joint(x, z) - log_q(z), q_mean, q_sd)  # Eq. 2
    posterior_kl = quad_expectation(lambda z: log_q(z) - (log_joint(x, z) - log_px), q_mean, q_sd)
    assert elbo < log_px
    assert posterior_kl > 0
    assert log_px - elbo == pytest.approx(posterior_kl, abs=1e-9)
    eq1 = quad_expectation(lambda z: log_likelihood(x, z), q_mean, q_sd) - kl_1d(q_mean, q_sd, 0.0, 1.0)
    assert eq1 == pytest.approx(elbo, abs=1e-9)


def test_the_bound_is_tight_at_the_exact_posterior():
    x = 1.1
    mean, sd = posterior(x)
    elbo = quad_expectation(lambda z: log_joint(x, z) - log_normal_pdf(z, mean, sd), mean, sd)
    assert elbo == pytest.approx(log_evidence_by_quadrature(x), abs=1e-9)
    # and the closed-form evidence of the conjugate model agrees with the quadrature: x ~ N(B, A^2 + S^2)
    assert log_evidence_by_quadrature(x) == pytest.approx(stats.norm.logpdf(x, B, math.hypot(A, S)), abs=1e-9)


def test_elbo_gap_by_enumeration_on_a_discrete_latent_model():
    """A latent variable with 6 states and 8 binary pixels: for many random q, log p(x) - ELBO(q) equals
    KL(q || p(z|x)) computed by scipy.stats.entropy, and is 0 at q = the posterior."""
    rng = np.random.default_rng(3)
    prior = rng.dirichlet(np.ones(6))
    pixel_probabilities = rng.uniform(0.05, 0.95, size=(6, 8))
    x = rng.integers(0, 2, size=8)
    log_lik = np.log(np.where(x == 1, pixel_probabilities, 1 - pixel_probabilities)).sum(axis=1)  # (6,)
    joint = np.exp(log_lik) * prior
    evidence = joint.sum()  # p(x) by enumeration
    exact_posterior = joint / evidence
    assert theory.log_evidence_by_enumeration(log_lik, np.log(prior)) == pytest.approx(math.log(evidence), abs=1e-12)
    for _ in range(50):
        q = rng.dirichlet(np.ones(6) * 0.7)
        gap = math.log(evidence) - theory.discrete_elbo(q, log_lik, np.log(prior))
        assert gap == pytest.approx(stats.entropy(q, exact_posterior), abs=1e-10)
        assert gap > 0
    posterior_elbo = theory.discrete_elbo(exact_posterior, log_lik, np.log(prior))
    assert posterior_elbo == pytest.approx(math.log(evidence), abs=1e-12)


# --------------------------------------------------------------------------- properties of KL


def test_kl_is_nonnegative_and_zero_only_for_equal_distributions():
    rng = np.random.default_rng(4)
    for _ in range(200):
        size = rng.integers(2, 10)
        p, q = rng.dirichlet(np.ones(size)), rng.dirichlet(np.ones(size))
        value = theory.kl_divergence(p, q)
        assert value == pytest.approx(stats.entropy(p, q), rel=1e-12, abs=1e-14)
        assert value > 0
        assert theory.kl_divergence(p, p) == 0.0


def test_kl_is_not_symmetric():
    """By hand: p = (1/2, 1/2), q = (9/10, 1/10): KL(p||q) = (1/2) log(25/9) and KL(q||p) = (9/10) log(9/5)
    + (1/10) log(1/5); they differ."""
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    forward, backward = theory.kl_divergence(p, q), theory.kl_divergence(q, p)
    assert forward == pytest.approx(0.5 * math.log(25 / 9), rel=1e-12)
    assert backward == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), rel=1e-12)
    assert abs(forward - backward) > 0.1
    # the Gaussian KL too: KL(N(0,1) || N(0,2^2)) = log 2 - 3/8, KL(N(0,2^2) || N(0,1)) = 3/2 - log 2
    assert kl_1d(0, 1, 0, 2) == pytest.approx(math.log(2) - 3 / 8, rel=1e-12)
    assert kl_1d(0, 2, 0, 1) == pytest.approx(1.5 - math.log(2), rel=1e-12)


def test_kl_has_no_upper_bound():
    """KL(Bern(1/2) || Bern(e)) = (1/2) log(1/(4 e (1 - e))) grows without bound as e -> 0, becomes +inf
    at e = 0 (q = 0 where p > 0), and KL(N(0,1) || N(m,1)) = m^2/2 grows without bound in m."""
    for eps in (1e-2, 1e-5, 1e-10, 1e-100):
        expected = 0.5 * math.log(1 / (4 * eps * (1 - eps)))
        assert theory.kl_divergence([0.5, 0.5], [1 - eps, eps]) == pytest.approx(expected, rel=1e-9)
    assert theory.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert stats.entropy([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert theory.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))  # 0 log 0 = 0
    values = [kl_1d(0.0, 1.0, m, 1.0) for m in (1, 10, 100, 1000)]
    assert values == pytest.approx([0.5, 50.0, 5000.0, 500000.0], rel=1e-12)


# --------------------------------------------------------------------------- Gaussian KL


def test_kl_of_a_distribution_with_itself_is_zero():
    generator = torch.Generator().manual_seed(5)
    mu = torch.randn(64, 2, generator=generator, dtype=torch.float64) * 3
    logvar = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    assert torch.equal(theory.kl_diag_gaussians(mu, logvar, mu, logvar), torch.zeros(64, dtype=torch.float64))


@pytest.mark.parametrize("mu_phi, mu_p, sigma", [(0.0, 1.0, 1.0), (2.5, -1.0, 0.3), (-4.0, -4.5, 7.0)])
def test_equal_sigma_kl_is_the_squared_mean_difference_over_two_sigma_squared(mu_phi, mu_p, sigma):
    """KL(N(mu_phi, s^2) || N(mu_p, s^2)) = (mu_phi - mu_p)^2 / (2 s^2): by hand and by quadrature."""
    expected = (mu_phi - mu_p) ** 2 / (2 * sigma ** 2)
    assert kl_1d(mu_phi, sigma, mu_p, sigma) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    by_quadrature = quad_expectation(
        lambda z: log_normal_pdf(z, mu_phi, sigma) - log_normal_pdf(z, mu_p, sigma), mu_phi, sigma)
    assert by_quadrature == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 0.0, 2.0), (1.5, 0.2, -0.5, 1.3), (-3.0, 4.0, 2.0, 0.5)])
def test_general_gaussian_kl_matches_quadrature_and_torch(m1, s1, m2, s2):
    """log(s2/s1) + (s1^2 + (m1 - m2)^2)/(2 s2^2) - 1/2 against scipy.quad of p log(p/q) and
    torch.distributions.kl_divergence."""
    p, q = stats.norm(m1, s1), stats.norm(m2, s2)  # scipy's own densities here: an independent formula
    by_quadrature = integrate.quad(lambda z: p.pdf(z) * (p.logpdf(z) - q.logpdf(z)), m1 - 14 * s1, m1 + 14 * s1,
                                   **QUAD)[0]
    by_torch = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s1), torch.distributions.Normal(m2, s2))
    assert kl_1d(m1, s1, m2, s2) == pytest.approx(by_quadrature, abs=1e-9)
    assert kl_1d(m1, s1, m2, s2) == pytest.approx(float(by_torch), rel=1e-6)
    formula = math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    assert kl_1d(m1, s1, m2, s2) == pytest.approx(formula, rel=1e-12)


def test_diagonal_gaussian_kl_sums_over_dimensions():
    """In D dimensions a diagonal-Gaussian KL is the sum of the 1-D KLs (independence), checked against
    torch's MultivariateNormal KL with diagonal covariances."""
    generator = torch.Generator().manual_seed(6)
    mu_q, mu_p = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    lv_q, lv_p = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    reference = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mu_q, torch.diag_embed(lv_q.exp())),
        torch.distributions.MultivariateNormal(mu_p, torch.diag_embed(lv_p.exp())))
    torch.testing.assert_close(theory.kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p), reference, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- Eq. 1 vs Eq. 2


def _estimator_moments(x: float, q_mean: float, q_sd: float) -> dict[str, float]:
    """Mean and variance of the one-sample estimators f1 (Eq. 1) and f2 (Eq. 2) under z ~ q, by quadrature."""
    kl = kl_1d(q_mean, q_sd, 0.0, 1.0)
    f1 = lambda z: log_likelihood(x, z) - kl  # noqa: E731
    f2 = lambda z: log_joint(x, z) - log_normal_pdf(z, q_mean, q_sd)  # noqa: E731
    out = {}
    for name, f in (("eq1", f1), ("eq2", f2)):
        mean = quad_expectation(f, q_mean, q_sd)
        out[name + "_mean"] = mean
        out[name + "_var"] = quad_expectation(lambda z, f=f, mean=mean: (f(z) - mean) ** 2, q_mean, q_sd)
    return out


def test_eq1_and_eq2_have_the_same_value_by_quadrature_and_by_monte_carlo():
    """Same expectation (quadrature); and their Monte Carlo averages over 20,000 draws agree with it within
    5 standard errors (the SE of each average estimated from the draws themselves)."""
    x, q_mean, q_sd = 0.9, 0.1, 0.8
    moments = _estimator_moments(x, q_mean, q_sd)
    assert moments["eq1_mean"] == pytest.approx(moments["eq2_mean"], abs=1e-9)
    rng = np.random.default_rng(7)
    z = rng.normal(q_mean, q_sd, size=20_000)
    kl = kl_1d(q_mean, q_sd, 0.0, 1.0)
    draws = {"eq1": log_likelihood(x, z) - kl,
             "eq2": log_joint(x, z) - stats.norm.logpdf(z, q_mean, q_sd)}
    for values in draws.values():
        standard_error = values.std(ddof=1) / math.sqrt(values.size)
        assert abs(values.mean() - moments["eq1_mean"]) < 5 * standard_error


def test_the_closed_form_kl_removes_the_noise_of_the_kl_part():
    """Eq. 2 - Eq. 1 = log p(z) - log q(z) + KL(q || p(z)): a zero-mean term with positive variance unless
    q = p(z). Eq. 1 has none of it; its whole variance is that of log p(x|z)."""
    for q_mean, q_sd in [(0.7, 0.3), (-1.0, 2.0), (2.0, 0.5)]:
        kl = kl_1d(q_mean, q_sd, 0.0, 1.0)
        noise = lambda z, m=q_mean, s=q_sd, kl=kl: log_normal_pdf(z, 0.0, 1.0) - log_normal_pdf(z, m, s) + kl  # noqa: E731
        assert quad_expectation(noise, q_mean, q_sd) == pytest.approx(0.0, abs=1e-9)
        assert quad_expectation(lambda z, noise=noise: noise(z) ** 2, q_mean, q_sd) > 1e-2
    prior_noise = quad_expectation(lambda z: (log_normal_pdf(z, 0.0, 1.0) - log_normal_pdf(z, 0.0, 1.0)) ** 2,
                                   0.0, 1.0)
    assert prior_noise == 0.0


@pytest.mark.parametrize("q_mean, q_sd", [(0.0, 1.0), (0.7, 0.3), (-1.0, 2.0), (2.5, 0.05)])
def test_the_variance_of_the_kl_noise_is_mu2_sigma2_plus_half_sigma2_minus_1_squared(q_mean, q_sd):
    """Var_q[log p(z) - log q(z)] = mu^2 s^2 + (s^2 - 1)^2 / 2 in one dimension, by quadrature; in D
    dimensions the terms add up (independent coordinates), checked on a (2,)-dim q with 200,000 draws
    against the sample variance with a tolerance of 5 standard errors of a sample variance."""
    mean_noise = quad_expectation(lambda z: log_normal_pdf(z, 0.0, 1.0) - log_normal_pdf(z, q_mean, q_sd),
                                  q_mean, q_sd)
    variance = quad_expectation(
        lambda z: (log_normal_pdf(z, 0.0, 1.0) - log_normal_pdf(z, q_mean, q_sd) - mean_noise) ** 2, q_mean, q_sd)
    predicted = theory.kl_estimator_noise_variance(torch.tensor([[q_mean]]), torch.tensor([[2 * math.log(q_sd)]]))
    assert float(predicted) == pytest.approx(variance, rel=1e-6, abs=1e-12)


def test_the_kl_noise_variance_adds_over_dimensions():
    mu = torch.tensor([[0.8, -1.5]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0, 0.6]], dtype=torch.float64)
    eps = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    noise = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
             - torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1))
    centered = noise - noise.mean()
    sample_variance = centered.pow(2).mean()
    # SE of a sample variance: sqrt((m4 - var^2) / n), m4 the fourth central moment
    standard_error = ((centered.pow(4).mean() - sample_variance ** 2) / noise.numel()).sqrt()
    predicted = theory.kl_estimator_noise_variance(mu, logvar)[0]
    assert abs(sample_variance - predicted) < 5 * standard_error


def test_which_estimator_has_the_lower_variance_depends_on_q():
    """Var(Eq. 2) = Var(Eq. 1) + Var(noise) + 2 Cov(log p(x|z), noise). Far from the posterior the
    KL noise adds variance (Eq. 1 lower); at q = p(z|x), log p(x, z) - log q(z) = log p(x) for every z, so
    Eq. 2 has zero variance while Eq. 1 keeps Var log p(x|z) > 0."""
    x = 1.7
    mismatched = _estimator_moments(x, 2.0, 0.3)
    assert mismatched["eq1_var"] < mismatched["eq2_var"]
    mean, sd = posterior(x)
    at_posterior = _estimator_moments(x, mean, sd)
    assert at_posterior["eq2_var"] < 1e-9
    assert at_posterior["eq1_var"] > 0.1


# --------------------------------------------------------------------------- q = N(0, I) is blind to x


def test_a_fixed_standard_normal_q_makes_the_elbo_blind_to_x():
    """With q(z|x) = N(0, 1) for every x: the q and its KL term (= 0) are the same for all x, so the ELBO
    sees x only through E_{N(0,1)} log p(x|z); the best q differs per image (the posteriors), and the
    loss of the fixed q, log p(x) - ELBO = KL(N(0,1) || p(z|x)), grows as x moves away from typical data."""
    xs = [-3.0, 0.5, 4.0]
    kl_terms = [kl_1d(0.0, 1.0, 0.0, 1.0) for _ in xs]
    assert kl_terms == [0.0, 0.0, 0.0]
    fixed_elbos = [quad_expectation(lambda z, x=x: log_likelihood(x, z), 0.0, 1.0) for x in xs]
    best_qs = [posterior(x) for x in xs]
    assert len({round(m, 6) for m, _ in best_qs}) == len(xs)  # the optimal q moves with x
    losses = [log_evidence_by_quadrature(x) - e for x, e in zip(xs, fixed_elbos, strict=True)]
    for (mean, sd), loss in zip(best_qs, losses, strict=True):
        assert loss == pytest.approx(kl_1d(0.0, 1.0, mean, sd), abs=1e-9)
    assert losses[1] < losses[0] and losses[1] < losses[2]  # x = 0.5 ~ the prior mean of x (B)
    assert min(losses) > 0


def test_the_best_decoder_under_a_blind_q_outputs_the_mean_image():
    """Train a fully flexible decoder (one free logit vector per latent point, 7 Gauss-Hermite points of
    N(0, 1)) on 30 random binary 6-pixel images with q(z|x) = N(0, 1) for every x: scipy's L-BFGS finds
    yhat(z) = mean image at every z, i.e. the decoder ignores z."""
    rng = np.random.default_rng(10)
    images = (rng.uniform(size=(30, 6)) < rng.uniform(0.1, 0.9, size=6)).astype(np.float64)  # (N, D)
    nodes, weights = np.polynomial.hermite_e.hermegauss(7)
    weights = weights / weights.sum()  # E_{N(0,1)} f(z) ~ sum_k w_k f(z_k)

    def negative_objective_and_gradient(flat_logits):
        logits = flat_logits.reshape(7, 6)  # yhat(z_k) = sigmoid(logits[k])
        log_lik = images @ -np.logaddexp(0, -logits).T + (1 - images) @ -np.logaddexp(0, logits).T  # (N, K)
        # d/dlogits[k, j] of sum_n log p(x_n | z_k) = sum_n (x_nj - yhat_kj)
        gradient = weights[:, None] * (images.sum(axis=0)[None, :] - len(images) / (1 + np.exp(-logits)))
        return -(log_lik @ weights).sum(), -gradient.ravel()

    found = optimize.minimize(negative_objective_and_gradient, rng.normal(size=42), jac=True, method="L-BFGS-B",
                              options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    decoded = 1 / (1 + np.exp(-found.x.reshape(7, 6)))
    np.testing.assert_allclose(decoded, np.broadcast_to(images.mean(axis=0), (7, 6)), atol=1e-4)
    assert nodes.size == 7


# --------------------------------------------------------------------------- the Lagrangian


def _small_discrete_model():
    rng = np.random.default_rng(8)
    prior = rng.dirichlet(np.ones(5) * 2)  # 5 latent states
    pixel_probabilities = rng.uniform(0.05, 0.95, size=(5, 6))  # p(x_j = 1 | z), 6 binary pixels
    x = np.array([1, 0, 0, 1, 1, 0])
    log_lik = np.log(np.where(x == 1, pixel_probabilities, 1 - pixel_probabilities)).sum(axis=1)
    return log_lik, np.log(prior)


def test_the_lagrangian_optimum_is_the_posterior():
    """Maximize sum_z q log p(x|z) - KL(q || p(z)) subject to sum_z q = 1 with a generic optimizer (SLSQP
    with the simplex constraint, and BFGS on a softmax parametrization): both find p(z|x) computed by
    enumeration, and the maximum is log p(x)."""
    log_lik, log_prior = _small_discrete_model()
    joint = np.exp(log_lik + log_prior)
    enumerated_posterior = joint / joint.sum()

    def negative_objective(q):
        q = np.clip(q, 1e-300, None)
        return -(np.sum(q * log_lik) - np.sum(q * (np.log(q) - log_prior)))

    start = np.full(5, 0.2)
    constrained = optimize.minimize(negative_objective, start, method="SLSQP", bounds=[(0.0, 1.0)] * 5,
                                    constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1.0}],
                                    options={"ftol": 1e-14, "maxiter": 500})
    assert constrained.success
    np.testing.assert_allclose(constrained.x, enumerated_posterior, atol=1e-5)

    def softmax(theta):
        e = np.exp(theta - theta.max())
        return e / e.sum()

    unconstrained = optimize.minimize(lambda t: negative_objective(softmax(t)), np.zeros(5), method="BFGS",
                                      options={"gtol": 1e-10})
    np.testing.assert_allclose(softmax(unconstrained.x), enumerated_posterior, atol=1e-5)
    np.testing.assert_allclose(theory.posterior_by_enumeration(log_lik, log_prior), enumerated_posterior, rtol=1e-12)
    assert -unconstrained.fun == pytest.approx(math.log(joint.sum()), abs=1e-9)


def test_the_lagrangian_is_stationary_at_the_posterior_with_multiplier_one_minus_log_evidence():
    """L(q, lam) = sum q log p(x|z) - sum q log(q/p(z)) + lam (sum q - 1): its gradient in q, by central
    finite differences, vanishes at q = p(z|x) with lam = 1 - log p(x), and not at another q."""
    log_lik, log_prior = _small_discrete_model()
    log_px = math.log(np.exp(log_lik + log_prior).sum())
    lam = 1.0 - log_px

    def lagrangian(q):
        return np.sum(q * log_lik) - np.sum(q * (np.log(q) - log_prior)) + lam * (q.sum() - 1.0)

    def gradient(q, h=1e-6):
        return np.array([(lagrangian(q + h * e) - lagrangian(q - h * e)) / (2 * h) for e in np.eye(q.size)])

    joint = np.exp(log_lik + log_prior)
    assert np.abs(gradient(joint / joint.sum())).max() < 1e-7
    assert np.abs(gradient(np.full(5, 0.2))).max() > 1e-2
