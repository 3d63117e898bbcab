"""The VAE of SPEC §2: a diagonal-Gaussian encoder q_phi(z|x) and a Bernoulli decoder p_theta(x|z).

Networks only (the objective is in :mod:`mnistgen.losses`, the distributions in
:mod:`mnistgen.distributions`). Layers keep PyTorch's default initialisation (SPEC names none).

Parameter count with the defaults (D = 784, H = 500, D_z = 2):
encoder 784*500 + 500 + 2 * (500*2 + 2) = 394,504; decoder 2*500 + 500 + 500*784 + 784 = 394,284.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 28
IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE  # 784: images enter the encoder flattened


class Encoder(nn.Module):
    """q_phi(z|x) = N(mean, diag(exp(logvar))): Linear(784, 500) -> tanh -> two heads Linear(500, 2).

    ``mean`` and ``logvar`` are separate modules, as SPEC draws them.
    """

    def __init__(self, input_dim: int = IMAGE_PIXELS, hidden: int = 500, latent_dim: int = 2):
        super().__init__()
        self.hidden = nn.Linear(input_dim, hidden)
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 784) -> mean (B, D_z), log-variance (B, D_z)."""
        h = torch.tanh(self.hidden(x))  # (B, H)
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """f_theta(z): Linear(2, 500) -> tanh -> Linear(500, 784) -> sigmoid, the probability of each pixel.

    :meth:`logits` stops before the sigmoid: the log-likelihood is computed from it (stable);
    :meth:`forward` returns the probabilities, for figures and sampling.
    """

    def __init__(self, latent_dim: int = 2, hidden: int = 500, output_dim: int = IMAGE_PIXELS):
        super().__init__()
        self.hidden = nn.Linear(latent_dim, hidden)
        self.output = nn.Linear(hidden, output_dim)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D_z) -> logits (B, 784) of the Bernoulli pixels."""
        return self.output(torch.tanh(self.hidden(z)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D_z) -> probabilities (B, 784) in [0, 1]."""
        return torch.sigmoid(self.logits(z))


class VAE(nn.Module):
    """Encoder and decoder together; ``latent_dim`` and ``hidden`` as in :class:`mnistgen.config.VAEConfig`."""

    def __init__(self, latent_dim: int = 2, hidden: int = 500, input_dim: int = IMAGE_PIXELS):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = Encoder(input_dim, hidden, latent_dim)
        self.decoder = Decoder(latent_dim, hidden, input_dim)
