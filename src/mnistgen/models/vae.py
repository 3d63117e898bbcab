"""The VAE of SPEC §2: a diagonal-Gaussian encoder q_phi(z|x) and a Bernoulli decoder p_theta(x|z), and how it
trains: the model's forward is its training objective, and :func:`train_step` is the one training step. Layers keep
PyTorch's default initialisation (SPEC names none). Parameters with the defaults (D = 784, H = 500, D_z = 2):
encoder 784*500 + 500 + 2 * (500*2 + 2) = 394,504; decoder 2*500 + 500 + 500*784 + 784 = 394,284.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VAEConfig
from ..distributed import average_gradients
from ..losses import vae_elbo

IMAGE_SIZE = 28
IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE  # 784: images enter the encoder flattened


class Encoder(nn.Module):
    """q_phi(z|x) = N(mean, diag(exp(logvar))): Linear(784, 500) -> tanh -> two heads Linear(500, 2), as SPEC draws."""

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
    """f_theta(z): Linear(2, 500) -> tanh -> Linear(500, 784) -> sigmoid, the probability of each pixel; the
    log-likelihood is computed from :meth:`logits`, before the sigmoid (stable)."""

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

    def forward(self, x: torch.Tensor, eps: torch.Tensor, objective: str = "mc") -> torch.Tensor:
        """The training objective of each image (``--objective``: "mc" Eq. 2, "analytic" Eq. 1, "iwae" the K-sample
        bound; :func:`mnistgen.losses.vae_elbo`): x (B, 784), eps (B, D_z) or (K, B, D_z) -> (B,)."""
        return vae_elbo(self, x, eps, analytic_kl=objective == "analytic", importance_weighted=objective == "iwae")


def build_model(config: VAEConfig, device: torch.device) -> VAE:
    """SPEC §2's VAE with ``config``'s widths, initialized from the global RNG (seeded by the caller)."""
    return VAE(latent_dim=config.latent_dim, hidden=config.hidden).to(device)


def make_optimizer(model: nn.Module, config: VAEConfig) -> torch.optim.Optimizer:
    """Adam (SPEC: lr 1e-3, PyTorch's betas and eps), as one fused kernel where the device has it."""
    fused = next(model.parameters()).device.type in ("cpu", "cuda", "mps")
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused)


def draws_per_image(config: VAEConfig) -> int | None:
    """K of the draws eps (K, B, D_z) a step takes (``--train-samples``, and always for iwae); None for SPEC's one
    draw per image, eps (B, D_z)."""
    return config.train_samples if config.objective == "iwae" or config.train_samples > 1 else None


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
               objective: str = "mc") -> torch.Tensor:
    """One step on the batch's negative mean objective: the model's forward, autograd's backward, the optimizer.
    x (B, 784) binary images, eps (B, D_z) or (K, B, D_z) -> the batch's sum of the objective, (), detached on the
    device; for R replicas stacked (:mod:`mnistgen.accelerate.engines`) x (R, B, 784), eps (R, [K,] B, D_z) -> (R,)."""
    values = model(x, eps, objective)  # ([R,] B): the objective of each image
    loss = -values.mean(dim=-1).sum()  # each replica's -mean over its batch (the replicas are independent)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(optimizer)  # the mean over torchrun ranks (nothing in one process)
    optimizer.step()
    return values.detach().sum(dim=-1)
