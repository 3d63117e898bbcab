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

from .distributions import log_bernoulli_logits, log_normal_logvar, log_standard_normal, sample_normal_logvar
from .theory import kl_diag_gaussians


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


def vae_elbo(model: torch.nn.Module, x: torch.Tensor, analytic_kl: bool = False,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The ELBO of each image under ``model`` (a :class:`mnistgen.models.vae.VAE`), one z per image.

    Encodes x, draws z = mean + exp(logvar / 2) * eps with eps from ``generator`` (one (B, D_z) draw),
    decodes, and returns Eq. 1 (``analytic_kl``) or Eq. 2. Differentiable. x (B, 784) -> (B,).
    """
    mean, logvar = model.encoder(x)
    z = sample_normal_logvar(mean, logvar, generator)
    logits = model.decoder.logits(z)
    if analytic_kl:
        return elbo_analytic(x, logits, mean, logvar)
    return elbo_mc(x, logits, z, mean, logvar)
