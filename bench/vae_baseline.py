"""The yardstick of bench/vae_speed.py: a straightforward PyTorch training loop of the VAE of SPEC §2.

What a first implementation writes: nn.Linear modules, a shuffled index sliced into batches, the ELBO of
Eq. 2 through autograd (BCE with logits, Gaussian log-densities written out), the default Adam, and one
``loss.item()`` per step. It draws its random numbers exactly as mnistgen's loop does (the batch order
from one generator with ``torch.randperm``, eps per step from another), so for the same seed and data the
two loops follow the same trajectory; tests/test_vae_speed.py checks that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)


class PlainVAE(nn.Module):
    """The same architecture as mnistgen.models.vae.VAE, written plainly."""

    def __init__(self, latent_dim: int = 2, hidden: int = 500, pixels: int = 784):
        super().__init__()
        self.enc = nn.Linear(pixels, hidden)
        self.enc_mu = nn.Linear(hidden, latent_dim)
        self.enc_logvar = nn.Linear(hidden, latent_dim)
        self.dec = nn.Linear(latent_dim, hidden)
        self.dec_out = nn.Linear(hidden, pixels)

    @classmethod
    def copy_of(cls, vae) -> PlainVAE:
        """A PlainVAE with the weights of a mnistgen VAE (same starting point for both loops)."""
        plain = cls(vae.latent_dim, vae.encoder.hidden.out_features, vae.encoder.hidden.in_features)
        pairs = [(plain.enc, vae.encoder.hidden), (plain.enc_mu, vae.encoder.mean),
                 (plain.enc_logvar, vae.encoder.logvar), (plain.dec, vae.decoder.hidden),
                 (plain.dec_out, vae.decoder.output)]
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        return plain.to(vae.encoder.hidden.weight.device)


def baseline_epoch(model: PlainVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                   order_generator: torch.Generator, noise_generator: torch.Generator,
                   batch_size: int = 100) -> list[float]:
    """One epoch over ``images`` (N, 784), binary; returns the loss (-mean ELBO) of every step."""
    permutation = torch.randperm(len(images), generator=order_generator)
    losses = []
    for start in range(0, len(images), batch_size):
        x = images[permutation[start:start + batch_size]]
        h = torch.tanh(model.enc(x))
        mu, logvar = model.enc_mu(h), model.enc_logvar(h)
        eps = torch.randn(mu.shape, generator=noise_generator, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = model.dec_out(torch.tanh(model.dec(z)))
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
        log_pz = -0.5 * (z ** 2 + LOG_2PI).sum(dim=1)
        log_qz = -0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + LOG_2PI).sum(dim=1)
        loss = -(log_px + log_pz - log_qz).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
