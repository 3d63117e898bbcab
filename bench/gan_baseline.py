"""The yardstick of bench/gan_speed.py: the classic GAN training loop, written straightforwardly.

What a first implementation writes: a torch DataLoader with ``shuffle=True`` over a TensorDataset,
the networks in PyTorch's default memory layout, ``nn.BCEWithLogitsLoss``, the default Adam, and per
batch the classic recipe: G(z) for D's step (detached), D on the real and on the generated batch
separately, then G(z) again for G's step, whose ``backward()`` also fills D's gradients (thrown away
by the next ``zero_grad``), and one ``.item()`` per loss per step.

:func:`classic_step` is one batch of it; tests/test_gan_speed.py gives it and mnistgen's
:func:`mnistgen.models.gan.train_step` the same weights, batches and noise and checks that both end with
the same weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_loader(images: torch.Tensor, batch_size: int, order_generator: torch.Generator) -> DataLoader:
    """Shuffled batches of (N, 1, 28, 28) images, the last partial batch dropped."""
    return DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True, drop_last=True,
                      generator=order_generator)


def classic_step(generator: nn.Module, discriminator: nn.Module, optimizer_g: torch.optim.Optimizer,
                 optimizer_d: torch.optim.Optimizer, real: torch.Tensor, z: torch.Tensor) -> tuple[float, float]:
    """One D step then one G step, the classic way; returns (D loss, G loss)."""
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)

    # D step: maximise log D(x) + log(1 - D(G(z)))
    fake = generator(z)
    d_loss = bce(discriminator(real), ones) + bce(discriminator(fake.detach()), zeros)
    optimizer_d.zero_grad()
    d_loss.backward()
    optimizer_d.step()

    # G step: minimise -log D(G(z)), with G(z) computed again
    fake = generator(z)
    g_loss = bce(discriminator(fake), ones)
    optimizer_g.zero_grad()
    g_loss.backward()
    optimizer_g.step()
    return d_loss.item(), g_loss.item()


def baseline_epoch(generator: nn.Module, discriminator: nn.Module, optimizer_g: torch.optim.Optimizer,
                   optimizer_d: torch.optim.Optimizer, loader: DataLoader, noise_generator: torch.Generator,
                   zdim: int, max_batches: int | None = None) -> list[tuple[float, float]]:
    """One epoch of the classic loop (or its first ``max_batches`` batches); returns (D loss, G loss) per step."""
    losses = []
    for step, (real,) in enumerate(loader):
        if max_batches is not None and step == max_batches:
            break
        z = torch.rand(real.shape[0], zdim, generator=noise_generator) * 2 - 1
        losses.append(classic_step(generator, discriminator, optimizer_g, optimizer_d, real, z))
    return losses
