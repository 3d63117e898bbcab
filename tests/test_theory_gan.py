"""SPEC §4, GAN half: optimal discriminator, value at D* = 2 JSD - log 4, KL vs W1 on three uniforms.

Each check uses an independent computation: scipy quadrature on scipy.stats densities, scipy.optimize,
scipy.spatial.distance.jensenshannon, scipy.stats.entropy and scipy.stats.wasserstein_distance.
The derivations are in docs/theory.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, spatial, stats

from mnistgen import theory

LOG4 = math.log(4.0)
QUAD = {"epsabs": 1e-11, "epsrel": 1e-11, "limit": 400}

# two smooth 1-D densities: "data" a two-component mixture, "generator" a single Gaussian
DATA = (0.3, stats.norm(-1.0, 0.5), 0.7, stats.norm(1.2, 0.8))
GENERATOR = stats.norm(0.4, 1.1)


def p_data(x):
    w1, c1, w2, c2 = DATA
    return w1 * c1.pdf(x) + w2 * c2.pdf(x)


def p_generator(x):
    return GENERATOR.pdf(x)


# --------------------------------------------------------------------------- the optimal discriminator


@pytest.mark.parametrize("a, b", [(1.0, 1.0), (0.2, 3.0), (5.0, 0.01), (1e-3, 1e-3), (0.7, 0.0)])
def test_optimal_discriminator_maximizes_the_pointwise_objective(a, b):
    """For a, b >= 0 (not both 0), D -> a log D + b log(1 - D) on [0, 1] peaks at a / (a + b): checked on a
    grid of 10^6 + 1 points and with scipy's bounded scalar minimizer."""
    d_star = float(theory.optimal_discriminator(a, b))
    assert d_star == pytest.approx(a / (a + b), rel=1e-15)
    grid = np.linspace(0.0, 1.0, 1_000_001)
    values = theory.pointwise_discriminator_objective(grid, a, b)
    assert abs(grid[np.argmax(values)] - d_star) <= 1e-6
    if 0 < d_star < 1:
        found = optimize.minimize_scalar(lambda d: -theory.pointwise_discriminator_objective(d, a, b),
                                         bounds=(1e-12, 1 - 1e-12), method="bounded", options={"xatol": 1e-10})
        assert found.x == pytest.approx(d_star, abs=1e-6)
        assert theory.pointwise_discriminator_objective(d_star, a, b) >= values.max() - 1e-12


def test_optimal_discriminator_beats_every_other_discriminator_on_tabulated_densities():
    """V(D*, G) >= V(D, G) for 200 random discriminators and for small perturbations of D*."""
    grid = np.linspace(-6, 7, 2601)
    dx = grid[1] - grid[0]
    data, model = p_data(grid), p_generator(grid)
    best = theory.gan_value_at_optimal_discriminator(data, model, dx)
    rng = np.random.default_rng(0)
    d_star = theory.optimal_discriminator(data, model)
    assert theory.gan_value(data, model, d_star, dx) == pytest.approx(best, rel=1e-12)  # the stable form agrees
    for _ in range(100):
        assert theory.gan_value(data, model, rng.uniform(0.01, 0.99, size=grid.size), dx) < best
        nudged = np.clip(d_star + rng.normal(0, 0.01, size=grid.size), 1e-9, 1 - 1e-9)
        assert theory.gan_value(data, model, nudged, dx) < best


# --------------------------------------------------------------------------- value at D* and the JSD


def test_value_at_optimal_discriminator_is_2jsd_minus_log4_by_quadrature():
    """Everything by scipy.quad on scipy.stats densities: V(D*, G) = integral p log(p/(p+g)) + g log(g/(p+g))
    and JSD = integral [p log(2p/(p+g)) + g log(2g/(p+g))]/2. Then V = 2 JSD - log 4, and the product's
    tabulated versions on a fine grid agree with both."""
    def value_integrand(x):
        p, g = p_data(x), p_generator(x)
        return p * math.log(p / (p + g)) + g * math.log(g / (p + g))

    def jsd_integrand(x):
        p, g = p_data(x), p_generator(x)
        m = 0.5 * (p + g)
        return 0.5 * (p * math.log(p / m) + g * math.log(g / m))

    value = integrate.quad(value_integrand, -12, 14, **QUAD)[0]
    jsd = integrate.quad(jsd_integrand, -12, 14, **QUAD)[0]
    assert value == pytest.approx(2 * jsd - LOG4, abs=1e-9)
    assert 0 < jsd < math.log(2)

    grid = np.linspace(-12, 14, 200_001)
    dx = grid[1] - grid[0]
    data, model = p_data(grid), p_generator(grid)
    assert theory.gan_value_at_optimal_discriminator(data, model, dx) == pytest.approx(value, abs=1e-7)
    assert theory.js_divergence(data, model, dx) == pytest.approx(jsd, abs=1e-7)


def test_js_divergence_matches_scipy_on_discrete_distributions():
    """scipy.spatial.distance.jensenshannon returns sqrt(JSD) (natural log by default)."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        p, q = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
        jsd = theory.js_divergence(p, q)
        assert jsd == pytest.approx(spatial.distance.jensenshannon(p, q) ** 2, rel=1e-9)
        assert theory.gan_value_at_optimal_discriminator(p, q) == pytest.approx(2 * jsd - LOG4, abs=1e-12)
        assert theory.js_divergence(q, p) == pytest.approx(jsd, rel=1e-12)  # symmetric, unlike KL
    # disjoint supports: the JSD saturates at log 2, whatever the distance between the supports
    assert theory.js_divergence([0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]) == pytest.approx(math.log(2), rel=1e-12)


def test_value_at_optimum_is_minimized_exactly_when_the_generator_matches_the_data():
    """With p_data = N(0, 1) and p_G = N(m, s^2): V(D*, G) = -log 4 at (m, s) = (0, 1) and larger anywhere
    else; scipy.optimize, started away from it, finds (0, 1) and -log 4."""
    grid = np.linspace(-15, 15, 30_001)
    dx = grid[1] - grid[0]
    data = stats.norm.pdf(grid)

    def value(params):
        m, log_s = params
        return theory.gan_value_at_optimal_discriminator(data, stats.norm.pdf(grid, m, math.exp(log_s)), dx)

    assert value((0.0, 0.0)) == pytest.approx(-LOG4, abs=1e-9)
    for params in [(0.05, 0.0), (0.0, 0.05), (2.0, 0.3), (-1.0, -0.5)]:
        assert value(params) > -LOG4 + 1e-5
    found = optimize.minimize(value, x0=np.array([1.5, 0.6]), method="Nelder-Mead",
                              options={"xatol": 1e-6, "fatol": 1e-13, "maxiter": 2000})
    np.testing.assert_allclose(found.x, [0.0, 0.0], atol=1e-3)
    assert found.fun == pytest.approx(-LOG4, abs=1e-9)


# --------------------------------------------------------------------------- KL vs W1 on three uniforms

P1, P2, P3 = (0.0, 1.0), (0.5, 1.5), (1.0, 2.0)


def test_kl_between_the_shifted_uniforms_is_infinite():
    """KL(P1 || P2) = KL(P1 || P3) = +inf: P1 has mass on [0, 0.5) (resp. [0, 1)) where the other density
    is 0. Closed form, tabulated on a grid, and scipy.stats.entropy on the same tabulation agree."""
    assert theory.kl_uniform(*P1, *P2) == math.inf
    assert theory.kl_uniform(*P1, *P3) == math.inf
    assert theory.kl_uniform(*P2, *P1) == math.inf  # and the other way round
    assert theory.kl_uniform(0.2, 0.7, *P1) == pytest.approx(math.log(2))  # finite when supports nest
    grid = np.linspace(-0.5, 2.5, 3001)
    dx = grid[1] - grid[0]
    p1 = theory.uniform_density(grid, *P1)
    for other in (P2, P3):
        q = theory.uniform_density(grid, *other)
        assert theory.kl_divergence(p1, q, dx) == math.inf
        assert stats.entropy(p1, q) == math.inf


def test_jsd_of_the_shifted_uniforms_is_half_log2_and_log2():
    """By hand: on [0, 0.5) and [1, 1.5] the mixture m is 1/2, on [0.5, 1) it is 1, so KL(P1 || m) =
    0.5 log 2 = KL(P2 || m) and JSD(P1, P2) = 0.5 log 2; P1 and P3 overlap nowhere: JSD = log 2. Both by
    scipy.quad of the integrand as well."""
    grid = np.linspace(-0.5, 2.5, 300_001)
    dx = grid[1] - grid[0]
    p1 = theory.uniform_density(grid, *P1)

    def jsd_by_quad(other):
        def integrand(x):
            p, q = float(theory.uniform_density(x, *P1)), float(theory.uniform_density(x, *other))
            m = 0.5 * (p + q)
            return 0.5 * ((p * math.log(p / m) if p > 0 else 0.0) + (q * math.log(q / m) if q > 0 else 0.0))
        return integrate.quad(integrand, -0.5, 2.5, points=[0, 0.5, 1, 1.5, 2], **QUAD)[0]

    for other, expected in ((P2, 0.5 * math.log(2)), (P3, math.log(2))):
        assert jsd_by_quad(other) == pytest.approx(expected, abs=1e-9)
        # the tabulated version: the closed intervals make the grid points at the ends weigh dx/2 too much
        assert theory.js_divergence(p1, theory.uniform_density(grid, *other), dx) == pytest.approx(expected, abs=1e-4)


def test_wasserstein1_between_the_shifted_uniforms_is_half_and_one():
    """W1(P1, P2) = 1/2 and W1(P1, P3) = 1, from the CDFs (trapezoid on a grid, and scipy.quad of |F - G|)
    and from samples; on the same samples the product's quantile formula equals
    scipy.stats.wasserstein_distance (which integrates CDFs) to 1e-12."""
    grid = np.linspace(-1.0, 3.0, 40_001)
    f1 = theory.uniform_cdf(grid, *P1)
    for other, expected in ((P2, 0.5), (P3, 1.0)):
        from_cdfs = theory.wasserstein1_from_cdfs(grid, f1, theory.uniform_cdf(grid, *other))
        assert from_cdfs == pytest.approx(expected, abs=1e-9)
        by_quad = integrate.quad(lambda x, o=other: abs(stats.uniform.cdf(x, 0, 1) - stats.uniform.cdf(x, o[0], 1)),
                                 -1, 3, points=[0, 0.5, 1, 1.5, 2], **QUAD)[0]
        assert by_quad == pytest.approx(expected, abs=1e-9)

    rng = np.random.default_rng(2)
    n = 20_000
    sample1 = rng.uniform(*P1, size=n)
    for other, expected in ((P2, 0.5), (P3, 1.0)):
        sample = rng.uniform(*other, size=n)
        ours = theory.wasserstein1_samples(sample1, sample)
        assert ours == pytest.approx(stats.wasserstein_distance(sample1, sample), abs=1e-12)
        # Sampling error: |W1(emp1, emp2) - W1(P, Q)| <= W1(emp1, P) + W1(emp2, Q), each with mean
        # <= integral sqrt(F(1-F)/n) dx = (pi/8)/sqrt(n) for a uniform on a unit interval. 5/sqrt(n) is
        # more than 6 times the sum of the two means.
        assert abs(ours - expected) < 5 / math.sqrt(n)


def test_wasserstein1_from_samples_matches_scipy_for_unequal_sizes_and_weights_of_repeats():
    rng = np.random.default_rng(3)
    for _ in range(30):
        u = rng.normal(size=rng.integers(1, 60))
        v = rng.exponential(size=rng.integers(1, 60)) + rng.normal()
        assert theory.wasserstein1_samples(u, v) == pytest.approx(stats.wasserstein_distance(u, v), rel=1e-10,
                                                                  abs=1e-12)
    assert theory.wasserstein1_samples([0, 0, 1], [0, 1, 1]) == pytest.approx(1 / 3)


def test_w1_keeps_measuring_distance_where_kl_and_jsd_saturate():
    """Moving U[1, 2] further to U[t, t + 1], t >= 1: KL stays +inf, JSD stays log 2 (so the GAN value at D*
    stays 0), while W1 = t grows: a useful training signal only W1 provides."""
    grid = np.linspace(-1.0, 8.0, 90_001)
    dx = grid[1] - grid[0]
    p1 = theory.uniform_density(grid, *P1)
    for shift in (1.5, 3.0, 6.0):
        q = theory.uniform_density(grid, shift, shift + 1)
        assert theory.kl_divergence(p1, q, dx) == math.inf
        assert theory.js_divergence(p1, q, dx) == pytest.approx(math.log(2), rel=1e-3)
        assert theory.gan_value_at_optimal_discriminator(p1, q, dx) == pytest.approx(0.0, abs=2e-3)
        w1 = theory.wasserstein1_from_cdfs(grid, theory.uniform_cdf(grid, *P1),
                                           theory.uniform_cdf(grid, shift, shift + 1))
        assert w1 == pytest.approx(shift, abs=1e-9)
