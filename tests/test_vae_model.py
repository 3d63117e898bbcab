"""The VAE of SPEC §2: architecture, parameter counts, the ELBO (Eq. 1 and Eq. 2, by hand and in
expectation), the hand-derived gradient against autograd, numerical safety, and the estimators of log p(x)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mnistgen.accelerate.vae import elbo_with_gradients
from mnistgen.config import VAEConfig
from mnistgen.distributions import log_normal_logvar, log_standard_normal, sample_normal_logvar
from mnistgen.evaluate.vae import iw_log_likelihood, log_marginal_quadrature
from mnistgen.losses import elbo_analytic, elbo_mc, elbo_samples, vae_elbo
from mnistgen.models.vae import VAE, make_optimizer
from mnistgen.theory import kl_diag_gaussians

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_with_seed(seed: int = 0, dtype=torch.float32) -> VAE:
    torch.manual_seed(seed)
    return VAE().to(dtype)


def random_binary(n: int, seed: int = 0, p: float = 0.3) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 784), p), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- architecture


def test_layers_and_parameter_counts_are_the_specification():
    model = VAE()
    encoder, decoder = model.encoder, model.decoder
    assert [(m.in_features, m.out_features) for m in (encoder.hidden, encoder.mean, encoder.logvar)] == \
        [(784, 500), (500, 2), (500, 2)]
    assert [(m.in_features, m.out_features) for m in (decoder.hidden, decoder.output)] == [(2, 500), (500, 784)]
    assert all(isinstance(m, nn.Linear) and m.bias is not None
               for m in (encoder.hidden, encoder.mean, encoder.logvar, decoder.hidden, decoder.output))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(encoder) == 784 * 500 + 500 + 2 * (500 * 2 + 2)  # 394,504
    assert count(decoder) == 2 * 500 + 500 + 500 * 784 + 784  # 394,284
    assert count(model) == 788_788


def test_forward_is_linear_tanh_heads_and_linear_tanh_linear_sigmoid():
    model = model_with_seed(1, torch.float64)
    x = random_binary(4).double()
    p = {name: value.detach().numpy() for name, value in model.named_parameters()}
    h = np.tanh(x.numpy() @ p["encoder.hidden.weight"].T + p["encoder.hidden.bias"])
    mean, logvar = model.encoder(x)
    np.testing.assert_allclose(mean.detach().numpy(), h @ p["encoder.mean.weight"].T + p["encoder.mean.bias"])
    np.testing.assert_allclose(logvar.detach().numpy(), h @ p["encoder.logvar.weight"].T + p["encoder.logvar.bias"])
    z = torch.randn(4, 2, dtype=torch.float64)
    logits = np.tanh(z.numpy() @ p["decoder.hidden.weight"].T + p["decoder.hidden.bias"]) @ \
        p["decoder.output.weight"].T + p["decoder.output.bias"]
    np.testing.assert_allclose(model.decoder.logits(z).detach().numpy(), logits)
    np.testing.assert_allclose(model.decoder(z).detach().numpy(), 1 / (1 + np.exp(-logits)))
    assert mean.shape == logvar.shape == (4, 2) and model.decoder(z).shape == (4, 784)


# --------------------------------------------------------------------------- the ELBO


def test_elbo_by_hand():
    # x all black, logits 0 (every pixel p = 1/2): log p(x|z) = 784 log 1/2.
    x, logits = torch.zeros(2, 784), torch.zeros(2, 784)
    log_half = 784 * math.log(0.5)  # -543.43
    # row 0: q = N(0, I) = p(z) and z = 0, so log p(z) - log q(z|x) = 0 and the KL is 0.
    # row 1: q = N((1, 1), I), z = (1, 1): log p(z) - log q = 2 * (-1/2) = -1, KL = 2 * 1/2 = 1.
    mean = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    z, logvar = mean.clone(), torch.zeros(2, 2)
    torch.testing.assert_close(elbo_mc(x, logits, z, mean, logvar), torch.tensor([log_half, log_half - 1.0]))
    torch.testing.assert_close(elbo_analytic(x, logits, mean, logvar), torch.tensor([log_half, log_half - 1.0]))


def test_eq1_and_eq2_agree_in_expectation():
    model = model_with_seed(2)
    with torch.no_grad():  # a more informative encoder than at initialisation: q far from N(0, I)
        model.encoder.mean.weight.mul_(8.0)
    x = random_binary(3, seed=1)
    n = 4000
    repeated = x.repeat_interleave(n, dim=0)  # (3n, 784)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        mc = vae_elbo(model, repeated, torch.randn(3 * n, 2, generator=generator), False).view(3, n).double()
        analytic = vae_elbo(model, repeated, torch.randn(3 * n, 2, generator=generator), True).view(3, n).double()
    standard_error = (mc.var(dim=1) / n + analytic.var(dim=1) / n).sqrt()
    assert ((mc.mean(dim=1) - analytic.mean(dim=1)).abs() < 4 * standard_error).all()
    # a wrong KL (sign, factor 1/2, variance for log-variance) would move Eq. 1 by several nats
    assert (standard_error < 0.5).all()


def test_closed_form_kl_against_monte_carlo():
    mean = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    logvar = torch.tensor([[0.4, -2.0], [-0.5, 1.0]], dtype=torch.float64)
    n = 200000
    z = sample_normal_logvar(mean.repeat(n, 1), logvar.repeat(n, 1), torch.Generator().manual_seed(4))
    terms = (log_normal_logvar(z, mean.repeat(n, 1), logvar.repeat(n, 1)) - log_standard_normal(z)).view(n, 2)
    standard_error = terms.std(dim=0) / math.sqrt(n)
    assert ((terms.mean(dim=0) - kl_diag_gaussians(mean, logvar)).abs() < 4 * standard_error).all()


@pytest.mark.parametrize("analytic_kl", [False, True])
def test_hand_derived_gradient_equals_autograd(analytic_kl):
    model = model_with_seed(5, torch.float64)
    with torch.no_grad():
        model.encoder.logvar.bias.fill_(-1.0)  # a posterior narrower than the prior, as after training
    x = random_binary(32, seed=2).double()
    eps_generator = torch.Generator().manual_seed(6)
    eps = torch.randn((32, 2), generator=eps_generator, dtype=torch.float64)
    elbo_sum = elbo_with_gradients(model, x, eps, analytic_kl)
    by_hand = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    elbo = vae_elbo(model, x, eps, analytic_kl)
    (-elbo.mean()).backward()
    assert elbo_sum.item() == pytest.approx(elbo.sum().item(), rel=1e-10)
    for name, p in model.named_parameters():
        torch.testing.assert_close(by_hand[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_one_optimizer_step_changes_every_parameter():
    model = model_with_seed(7)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = make_optimizer(model, VAEConfig(lr=1e-3))
    x = random_binary(100, seed=3, p=0.5)  # every pixel is on in some image: every weight has a gradient
    elbo_with_gradients(model, x, torch.randn(100, 2), analytic_kl=False)
    optimizer.step()
    for name, p in model.named_parameters():
        assert (p.detach() != before[name]).all(), name


# --------------------------------------------------------------------------- numerical safety


@pytest.mark.parametrize("analytic_kl", [False, True])
def test_no_nan_on_black_and_white_images_and_extreme_latents(analytic_kl):
    model = model_with_seed(8)
    for images in (torch.zeros(4, 784), torch.ones(4, 784)):
        elbo = vae_elbo(model, images, torch.randn(4, 2), analytic_kl)
        assert torch.isfinite(elbo).all()
        elbo_with_gradients(model, images, torch.randn(4, 2), analytic_kl)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    z = torch.tensor([[1e4, -1e4], [-1e30, 1e30], [0.0, 0.0]])
    probabilities = model.decoder(z)
    assert torch.isfinite(probabilities).all() and probabilities.min() >= 0 and probabilities.max() <= 1
    with torch.no_grad():  # an encoder that outputs huge means and log-variances of +-50
        model.encoder.mean.bias.fill_(1e3)
        model.encoder.logvar.bias.copy_(torch.tensor([50.0, -50.0]))
        model.encoder.logvar.weight.zero_()
    for images in (torch.zeros(4, 784), torch.ones(4, 784)):
        assert torch.isfinite(vae_elbo(model, images, torch.randn(4, 2), analytic_kl)).all()
        elbo_with_gradients(model, images, torch.randn(4, 2), analytic_kl)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------- estimators of log p(x)


@pytest.fixture(scope="module")
def briefly_trained(mnist_raw):
    """A model after 60 Adam steps on 1,000 real images: posteriors narrower than the prior, not yet sharp."""
    images = torch.from_numpy((mnist_raw.train_images[:1000].reshape(1000, 784) >= 128).astype(np.float32))
    model = model_with_seed(9)
    optimizer = make_optimizer(model, VAEConfig(lr=1e-3))
    generator = torch.Generator().manual_seed(0)
    for step in range(60):
        x = images[(step % 10) * 100:(step % 10 + 1) * 100]
        elbo_with_gradients(model, x, torch.randn((100, 2), generator=generator), analytic_kl=False)
        optimizer.step()
    return model.eval(), images


def test_importance_weighted_estimate_with_one_sample_is_the_elbo(briefly_trained):
    model, images = briefly_trained
    x = images[:50]
    iw = iw_log_likelihood(model, x, k=1, generator=torch.Generator().manual_seed(1))
    elbo = elbo_samples(model, x, samples=1, generator=torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(iw, elbo, rtol=1e-5, atol=1e-3)


class GivenPosterior(nn.Module):
    """Stands in for the encoder: returns chosen q(z|x) parameters for the first len(x) images."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        super().__init__()
        self.mean, self.logvar = mean, logvar

    def forward(self, x):
        return self.mean[:len(x)], self.logvar[:len(x)]


def test_importance_weighted_estimate_approaches_log_p_x_from_quadrature(briefly_trained):
    model, images = briefly_trained
    x = images[:8]
    # the true posterior on a grid, computed here from the decoder alone (independent of evaluate.py)
    axis = torch.linspace(-5.0, 5.0, 121)  # posterior sds here are > 0.15: twice the grid step
    z = torch.cartesian_prod(axis, axis)  # (121^2, 2)
    with torch.no_grad():
        logits = model.decoder.logits(z)
        log_joint = x @ logits.t() - torch.nn.functional.softplus(logits).sum(1) - 0.5 * (z ** 2).sum(1) \
            - math.log(2 * math.pi)  # (8, 121^2): log p(x|z) + log p(z)
    cell = float(axis[1] - axis[0]) ** 2
    exact = torch.logsumexp(log_joint, dim=1) + math.log(cell)
    torch.testing.assert_close(log_marginal_quadrature(model, x, half_width=5.0, points=101), exact,
                               rtol=0, atol=1e-3)
    # q(z|x) = the Gaussian with the true posterior's mean and variance: a good importance proposal
    weights = torch.softmax(log_joint, dim=1)
    mean = weights @ z
    variance = weights @ z ** 2 - mean ** 2
    matched = type("Matched", (), {"encoder": GivenPosterior(mean, variance.log()), "decoder": model.decoder})()
    iw = iw_log_likelihood(matched, x, k=2000, generator=torch.Generator().manual_seed(4), max_elements=1 << 20)
    torch.testing.assert_close(iw, exact, rtol=0, atol=0.05)
    # with the trained encoder's q: ELBO < IW(K=5) < IW(K=500) < log p(x) (Jensen; the bound tightens with K)
    elbo = elbo_samples(model, x, samples=200, analytic_kl=True, generator=torch.Generator().manual_seed(2)).mean(0)
    iw_5 = iw_log_likelihood(model, x, k=5, generator=torch.Generator().manual_seed(3))
    iw_500 = iw_log_likelihood(model, x, k=500, generator=torch.Generator().manual_seed(5))
    assert elbo.mean() < iw_5.mean() < iw_500.mean() < exact.mean()
