"""Training objectives as pure functions of tensors (no modules, no state).

GAN (SPEC §3): binary cross-entropy on the discriminator's logits. D is trained towards 1 on real
and 0 on generated images; G uses the non-saturating loss -log D(G(z)).

VAE (SPEC §2): the evidence lower bound per image, in nats, by Eq. 2 (one Monte Carlo sample of
log p(x|z) + log p(z) - log q(z|x)) or by Eq. 1 (E_q[log p(x|z)] - KL(q(z|x) || p(z)) with the KL in
closed form, :func:`mnistgen.theory.kl_diag_gaussians`). Training maximizes the batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributions import log_bernoulli_logits, log_normal_logvar, log_standard_normal
from .theory import kl_diag_gaussians

ELBO_CHUNK_IMAGES = 1000  # images per forward pass of :func:`elbo_samples`


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Mean BCE of D: -[log D(x) + log(1 - D(G(z)))], averaged over the real and the fake batch each.

    Shapes: real_logits (B, 1) or (B,), fake_logits likewise. Returns a scalar: the sum of the two means.
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: mean of -log D(G(z)) = BCE(logits, 1). Scalar."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# --------------------------------------------------------------------------- VAE


def elbo_mc(x: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, mean: torch.Tensor,
            logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 2 with one sample: log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x) already drawn.

    Shapes: x, logits (B, 784); z, mean, logvar (B, D_z) -> (B,).
    """
    return log_bernoulli_logits(x, logits) + log_standard_normal(z) - log_normal_logvar(z, mean, logvar)


def elbo_analytic(x: torch.Tensor, logits: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 1: log p(x|z) (one sample z ~ q) minus the closed-form KL(q(z|x) || N(0, I)).

    Shapes: x, logits (B, 784); mean, logvar (B, D_z) -> (B,).
    """
    return log_bernoulli_logits(x, logits) - kl_diag_gaussians(mean, logvar)


def vae_elbo(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool = False) -> torch.Tensor:
    """The ELBO of each image under ``model`` (a :class:`mnistgen.models.vae.VAE`), from the modules' own code.

    Encodes x with ``model.encoder``, takes z = mean + exp(logvar / 2) * eps (the reparametrization, with the
    standard normal draws ``eps`` given), decodes with ``model.decoder.logits`` and returns Eq. 1
    (``analytic_kl``) or Eq. 2. Differentiable. x (B, 784), eps (B, D_z) -> (B,).
    """
    mean, logvar = model.encoder(x)  # (B, D_z) each
    z = mean + torch.exp(0.5 * logvar) * eps  # (B, D_z)
    logits = model.decoder.logits(z)  # (B, 784)
    if analytic_kl:
        return elbo_analytic(x, logits, mean, logvar)
    return elbo_mc(x, logits, z, mean, logvar)


def standard_normal_draws(count: int, latent_dim: int, generator: torch.Generator | None,
                          like: torch.Tensor) -> torch.Tensor:
    """eps ~ N(0, I): (count, latent_dim) on ``like``'s device and dtype, from ``generator``."""
    return torch.randn((count, latent_dim), generator=generator, device=like.device, dtype=like.dtype)


@torch.inference_mode()
def elbo_samples(model: torch.nn.Module, images: torch.Tensor, samples: int = 1, analytic_kl: bool = False,
                 generator: torch.Generator | None = None, chunk_size: int = ELBO_CHUNK_IMAGES) -> torch.Tensor:
    """The ELBO of each image for ``samples`` independent draws of z: (N, 784) -> (samples, N).

    Each draw is :func:`vae_elbo` (Eq. 1 with ``analytic_kl``, else Eq. 2) with eps from ``generator``, chunk
    by chunk (``chunk_size`` images at a time).
    """
    out = torch.empty(samples, len(images), device=images.device, dtype=images.dtype)
    for sample in range(samples):
        for start in range(0, len(images), chunk_size):
            chunk = images[start:start + chunk_size]
            eps = standard_normal_draws(len(chunk), model.latent_dim, generator, chunk)
            out[sample, start:start + len(chunk)] = vae_elbo(model, chunk, eps, analytic_kl)
    return out
