"""Training objectives as pure functions of tensors (no modules, no state): the GAN's binary cross-entropies on
D's logits (SPEC §3), the maximum mean discrepancy between two batches of images (``--mmd-weight``), and the VAE's
evidence lower bound per image, in nats, by Eq. 2 or Eq. 1, or with K draws per image the mean of K one-sample
estimates or the importance-weighted bound (SPEC §2; docs/theory.md, section 13)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .distributions import log_bernoulli_logits, log_normal_logvar, log_standard_normal
from .theory import kl_diag_gaussians

ELBO_CHUNK_IMAGES = 1000  # images per forward pass of :func:`elbo_samples`


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's binary cross-entropy: -[log D(x) + log(1 - D(G(z)))], the mean over the real and over the fake batch.
    Shapes: real_logits and fake_logits ([R,] B, 1) -> ([R],): one loss per replica where R replicas are stacked."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits), reduction="none")
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits), reduction="none")
    return real.mean(dim=(-2, -1)) + fake.mean(dim=(-2, -1))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's non-saturating loss: the mean of -log D(G(z)) = BCE(logits, 1). ([R,] B, 1) -> ([R],)."""
    loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="none")
    return loss.mean(dim=(-2, -1))


# the variances of mmd_squared's Gaussian kernels, in squared pixel distance (pixels in [0, 1]): MNIST's pairs of
# training images lie at medians from 45 (two 1s) to 127 (a 0 and another digit), so the widths run from the nearest
# neighbours to the whole set
MMD_BANDWIDTHS = (5.0, 10.0, 20.0, 40.0, 80.0)


def mmd_squared(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The unbiased estimate of the squared maximum mean discrepancy (Gretton et al., 2012) between two batches of
    images: the mean kernel value over the pairs of distinct images within each batch, less twice the mean over the
    pairs across them; the kernel is the sum over :data:`MMD_BANDWIDTHS` s of exp(-||x - y||^2 / (2 s)). It is 0 in
    expectation where the batches come from one distribution and grows as their distributions part, the share of a
    kind of image included. Shapes: ([R,] B, 1, 28, 28) each -> ([R],)."""
    x, y = generated.flatten(-3), real.flatten(-3)  # ([R,] B, 784)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # ([R,] B, 784) twice -> ([R,] B, B)
        squared = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2 * a @ b.mT
        squared = squared.clamp_min(0)  # rounding can leave -1e-5 where an image meets itself
        return sum(torch.exp(squared / (-2 * s)) for s in MMD_BANDWIDTHS)

    def within(a: torch.Tensor) -> torch.Tensor:  # the mean over the pairs of distinct images
        n = a.shape[-2]
        pairs = kernel(a, a)
        return (pairs.sum((-2, -1)) - pairs.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))

    return within(x) + within(y) - 2 * kernel(x, y).mean((-2, -1))


def elbo_mc(x: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, mean: torch.Tensor,
            logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 2 with one sample: log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x) already drawn.
    Shapes: x, logits (B, 784); z, mean, logvar (B, D_z) -> (B,)."""
    return log_bernoulli_logits(x, logits) + log_standard_normal(z) - log_normal_logvar(z, mean, logvar)


def elbo_analytic(x: torch.Tensor, logits: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 1: log p(x|z) (one sample z ~ q) minus the closed-form KL(q(z|x) || N(0, I)).
    Shapes: x, logits (B, 784); mean, logvar (B, D_z) -> (B,)."""
    return log_bernoulli_logits(x, logits) - kl_diag_gaussians(mean, logvar)


def vae_elbo(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool = False,
             importance_weighted: bool = False) -> torch.Tensor:
    """The ELBO of each image under ``model`` (a :class:`mnistgen.models.vae.VAE`), from the modules' own code:
    z = mean + exp(logvar / 2) * eps, then Eq. 1 (``analytic_kl``) or Eq. 2. x (B, 784), eps (B, D_z) -> (B,).

    With eps (K, B, D_z) (sample-major): the mean of the K one-sample estimates, or with ``importance_weighted`` the
    bound of Burda et al. (2016), log (1/K) sum_k exp(w_k), w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)."""
    if importance_weighted and eps.dim() == 2:
        raise ValueError("the importance-weighted bound takes eps of shape (K, B, D_z)")
    if importance_weighted and analytic_kl:
        raise ValueError("the importance-weighted bound is built on Eq. 2's integrand, not on Eq. 1")
    mean, logvar = model.encoder(x)  # (B, D_z) each
    z = mean + torch.exp(0.5 * logvar) * eps  # ([K,] B, D_z)
    if eps.dim() == 3:  # sample-major rows k*B + b: the decoder sees K*B rows, as it would K*B images
        samples = eps.shape[0]
        z = z.reshape(-1, z.shape[-1])  # (K*B, D_z)
        x, mean, logvar = x.repeat(samples, 1), mean.repeat(samples, 1), logvar.repeat(samples, 1)
    logits = model.decoder.logits(z)  # ([K*]B, 784)
    # ([K*]B,); with K draws Eq. 2's integrand is the log weight w_k
    per_draw = elbo_analytic(x, logits, mean, logvar) if analytic_kl else elbo_mc(x, logits, z, mean, logvar)
    if eps.dim() == 2:
        return per_draw
    per_draw = per_draw.view(samples, -1)  # (K, B)
    if importance_weighted:
        return torch.logsumexp(per_draw, dim=0) - math.log(samples)
    return per_draw.mean(dim=0)


def standard_normal_draws(count: int, latent_dim: int, generator: torch.Generator | None,
                          like: torch.Tensor, samples: int | None = None) -> torch.Tensor:
    """eps ~ N(0, I): (count, latent_dim) on ``like``'s device and dtype, from ``generator``; with ``samples``,
    (samples, count, latent_dim) (sample-major: with ``samples`` = 1, the very numbers of the 2-D draw)."""
    shape = (count, latent_dim) if samples is None else (samples, count, latent_dim)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


@torch.inference_mode()
def elbo_samples(model: torch.nn.Module, images: torch.Tensor, samples: int = 1, analytic_kl: bool = False,
                 generator: torch.Generator | None = None, chunk_size: int = ELBO_CHUNK_IMAGES) -> torch.Tensor:
    """The ELBO of each image for ``samples`` independent draws of z, (N, 784) -> (samples, N): :func:`vae_elbo`
    (Eq. 1 with ``analytic_kl``, else Eq. 2) with eps from ``generator``, ``chunk_size`` images at a time."""
    out = torch.empty(samples, len(images), device=images.device, dtype=images.dtype)
    for sample in range(samples):
        for start in range(0, len(images), chunk_size):
            chunk = images[start:start + chunk_size]
            eps = standard_normal_draws(len(chunk), model.latent_dim, generator, chunk)
            out[sample, start:start + len(chunk)] = vae_elbo(model, chunk, eps, analytic_kl)
    return out
